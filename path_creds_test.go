package instacart

import (
	"context"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

const redirectURI = "https://example.com/callback"

// setupRoles configures the engine and one role per grant and reuse mode.
func setupRoles(e *testEnv) {
	e.configure()
	for name, data := range map[string]map[string]any{
		"cc":        {"grant_type": "client_credentials", "scopes": "connect:fulfillment"},
		"cc-excl":   {"grant_type": "client_credentials", "scopes": "connect:fulfillment", "token_reuse": "exclusive"},
		"shopper":   {"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "user_id": "kamal"},
		"shoppers":  {"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations,connect:post_checkout", "allowed_user_ids": "store-*"},
		"link":      {"grant_type": "authorization_code", "scopes": "account_linking", "redirect_uri": redirectURI},
		"cc-capped": {"grant_type": "client_credentials", "scopes": "connect:fulfillment", "ttl": "1h", "max_ttl": "2h"},
	} {
		e.mustOK(logical.UpdateOperation, "roles/"+name, data)
	}
	e.fake.ResetCounters()
}

func TestCredsAllGrants(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")

	tests := []struct {
		name     string
		op       logical.Operation
		path     string
		data     map[string]any
		grant    string
		scopes   []string
		userID   string
		internal string // token_reuse in the lease
	}{
		{"client_credentials", logical.ReadOperation, "creds/cc", nil, "client_credentials", []string{"connect:fulfillment"}, "", "shared"},
		{"assertion, fixed user", logical.ReadOperation, "creds/shopper", nil, "fulfillment_user_assertion", []string{"connect:recommendations"}, "kamal", "shared"},
		{"assertion, caller's user", logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-42"}, "fulfillment_user_assertion", []string{"connect:recommendations", "connect:post_checkout"}, "store-42", "shared"},
		{"authorization_code", logical.UpdateOperation, "creds/link", map[string]any{"code": code}, "authorization_code", []string{"account_linking"}, "", "exclusive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now()
			resp := e.mustOK(tc.op, tc.path, tc.data)
			tok := resp.Data["access_token"].(string)
			info, ok := e.fake.Token(tok)
			wantFakeUser := tc.userID
			if tc.grant == "authorization_code" {
				wantFakeUser = "linked-user" // the user the code was issued for
			}
			if !ok || info.GrantType != tc.grant || info.UserID != wantFakeUser {
				t.Fatalf("fake knows token: %v, grant %q, user %q", ok, info.GrantType, info.UserID)
			}
			if got := usersStatus(t, e.fake.URL, tok); got != 200 {
				t.Errorf("Connect answered %d to the token, want 200", got)
			}
			if !reflect.DeepEqual(resp.Data["scopes"], tc.scopes) || resp.Data["token_type"] != "Bearer" {
				t.Errorf("data = %v", resp.Data)
			}
			if tc.userID != "" && resp.Data["user_id"] != tc.userID {
				t.Errorf("user_id = %v", resp.Data["user_id"])
			}
			expires, err := time.Parse(time.RFC3339, resp.Data["expires_at"].(string))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := time.Parse(time.RFC3339, resp.Data["created_at"].(string)); err != nil {
				t.Fatal(err)
			}
			// The lease lasts as long as the token, within 2 s.
			if d := resp.Secret.TTL - time.Until(expires); d > 2*time.Second || d < -2*time.Second {
				t.Errorf("lease TTL %v, token remaining %v", resp.Secret.TTL, time.Until(expires))
			}
			if expires.Before(before.Add(24*time.Hour - 2*time.Second)) {
				t.Errorf("expires_at %v", expires)
			}
			// Shared tokens are not kept in the lease (nothing revokes them);
			// exclusive ones carry what revoking them upstream needs.
			exclusive := tc.internal == "exclusive"
			for _, k := range []string{"token_reuse", "credentials_id", "access_token"} {
				if _, has := resp.Secret.InternalData[k]; has != exclusive {
					t.Errorf("lease internal data has %s: %v, want %v", k, has, exclusive)
				}
			}
			if resp.Secret.InternalData["role"] == nil || resp.Secret.InternalData["expires_at"] == nil {
				t.Errorf("lease internal data lacks role or expiry: %v", resp.Secret.InternalData)
			}
		})
	}
}

func TestCredsInputValidation(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	tests := []struct {
		name  string
		op    logical.Operation
		path  string
		data  map[string]any
		field string
	}{
		{"unknown role", logical.ReadOperation, "creds/nope", nil, "unknown role"},
		{"bad role name", logical.ReadOperation, "creds/a/b", nil, "name"},
		{"user outside globs", logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "other-1"}, "user_id"},
		{"user missing", logical.ReadOperation, "creds/shoppers", nil, "user_id"},
		{"user too long", logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-" + strings.Repeat("x", 10000)}, "user_id"},
		{"other user on fixed role", logical.UpdateOperation, "creds/shopper", map[string]any{"user_id": "mallory"}, "user_id"},
		{"user on cc", logical.UpdateOperation, "creds/cc", map[string]any{"user_id": "u"}, "user_id"},
		{"code missing", logical.ReadOperation, "creds/link", nil, "code"},
		{"code on cc", logical.UpdateOperation, "creds/cc", map[string]any{"code": "abc"}, "code"},
		{"code with newline", logical.UpdateOperation, "creds/link", map[string]any{"code": "a\nb"}, "code"},
		{"bad code upstream", logical.UpdateOperation, "creds/link", map[string]any{"code": "never-issued"}, "invalid_grant"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.storageSnapshot()
			resp, err := e.do(tc.op, tc.path, tc.data)
			expectError(t, resp, err, tc.field)
			after := e.storageSnapshot()
			if tc.field == "invalid_grant" {
				// Connect processed the code: it stays recorded as sent.
				for k := range after {
					if _, had := before[k]; !had && strings.HasPrefix(k, codeStoragePrefix) {
						delete(after, k)
					}
				}
			}
			if !reflect.DeepEqual(before, after) {
				t.Error("storage changed")
			}
		})
	}
	if resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": "never-issued"}); err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "already sent") {
		t.Errorf("a code Connect refused was sent again: %v %v", resp, err)
	}
	if got := e.fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("Connect saw %d token requests; only the bad code should reach it, once", got)
	}
}

func TestHungConnectReturnsWithinRequestDeadline(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true}, connectfake.Fault{Hang: true}, connectfake.Fault{Hang: true})
	for i, role := range []string{"cc", "cc-excl"} {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := e.doCtx(ctx, logical.ReadOperation, "creds/"+role, nil)
		cancel()
		if err == nil {
			t.Errorf("%s: hung Connect produced no error", role)
		}
		// Ignoring the deadline would wait out the 10 s attempt and retry.
		if got := e.fake.Requests(connectfake.PathToken); got != i+1 {
			t.Errorf("%s: %d token requests so far, want %d: the deadline ends the read", role, got, i+1)
		}
	}
}

func TestUnconfiguredEngine(t *testing.T) {
	e := newTestEnv(t)
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"grant_type": "client_credentials"})
	resp, err := e.do(logical.ReadOperation, "creds/cc", nil)
	expectError(t, resp, err, "config")
}

func TestCredentialRotation(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	oldShared := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	oldExcl := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)

	// Instacart issues new credentials for a cloned application.
	const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
	e.fake.AddClient(newID, newSecret)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": newID, "client_secret": newSecret})

	// Shared tokens from the old credentials are never handed out again.
	newShared := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	if newShared == oldShared {
		t.Fatal("shared token from the old credentials served after rotation")
	}
	if info, _ := e.fake.Token(newShared); info.ClientID != newID {
		t.Errorf("new token minted by %q", info.ClientID)
	}
	// The old exclusive lease still revokes, with the old credentials.
	if err := revoke(e, oldExcl.Secret); err != nil {
		t.Fatalf("revoking a lease minted with old credentials: %v", err)
	}
	if e.fake.TokenLive(oldExcl.Data["access_token"].(string)) {
		t.Error("old-credential token still live after its lease was revoked")
	}
	// Once every token they minted has expired, the old credentials are forgotten.
	e.advance(25 * time.Hour)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 1})
	cfg, err := getConfig(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Retired) != 0 {
		t.Errorf("retired credentials kept past every token's expiry: %d", len(cfg.Retired))
	}
}

// Rotating only the client secret (client_id and base_url kept, as the
// README shows): new mints use the new secret; tokens the old secret minted
// are no longer handed out, and still revoke, the shared one by a flush and
// the exclusive one with its lease, even though Instacart disabled the old
// secret (the fake keeps one secret per client), with the application's
// current secret.
func TestClientSecretOnlyRotation(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	oldShared := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	oldExcl := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	cfg, err := getConfig(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	oldID := cfg.CredentialsID

	const newSecret = "fake-rotated-secret-for-tests-24680"
	e.fake.AddClient(testClientID, newSecret) // the old secret is refused from now on
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_secret": newSecret})
	resp := e.mustOK(logical.ReadOperation, "config", nil)
	if resp.Data["client_id"] != testClientID || resp.Data["base_url"] != e.fake.URL {
		t.Fatalf("a write of client_secret alone changed the config: %v", resp.Data)
	}
	if cfg, _ = getConfig(context.Background(), e.storage); cfg.CredentialsID == oldID || len(cfg.Retired) != 1 || cfg.Retired[0].CredentialsID != oldID {
		t.Fatal("the old secret was not retired")
	}

	// New mints use the new secret (the only one the fake accepts).
	newShared := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	if newShared == oldShared {
		t.Fatal("the shared token minted with the old secret is still handed out")
	}
	if info, _ := e.fake.Token(newShared); info.ClientID != testClientID {
		t.Errorf("new token minted by %q", info.ClientID)
	}
	newExcl := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)

	// Tokens of the old secret still revoke.
	if err := revoke(e, oldExcl.Secret); err != nil {
		t.Fatalf("revoking a lease minted with the old secret: %v", err)
	}
	if e.fake.TokenLive(oldExcl.Data["access_token"].(string)) {
		t.Error("the old secret's exclusive token is live after its lease was revoked")
	}
	assertFlushCounts(t, e.mustOK(logical.DeleteOperation, "cache/cc", nil), 2, 0, 0)
	if e.fake.TokenLive(oldShared) || e.fake.TokenLive(newShared) {
		t.Error("a shared token is live after the flush")
	}
	if err := revoke(e, newExcl.Secret); err != nil || e.fake.TokenLive(newExcl.Data["access_token"].(string)) {
		t.Errorf("the new secret's exclusive token did not revoke: %v", err)
	}
}

// expires_in counts from the answer (RFC 6749 §5.1): a server that reuses a
// token answers with its original created_at and the remaining expires_in.
func TestExpiresInCountsFromArrival(t *testing.T) {
	for _, role := range []string{"cc", "cc-excl"} {
		t.Run(role, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			now := time.Now().Truncate(time.Second)
			e.b.now = func() time.Time { return now }
			e.fake.SetClockSkew(-50000 * time.Second)
			e.fake.SetTokenLifetime(36400 * time.Second)

			resp := e.mustOK(logical.ReadOperation, "creds/"+role, nil)
			if resp.Secret.TTL != 36400*time.Second {
				t.Errorf("lease TTL = %v, want 36400s", resp.Secret.TTL)
			}
			if want := now.Add(36400 * time.Second).UTC().Format(time.RFC3339); resp.Data["expires_at"] != want {
				t.Errorf("expires_at = %v, want %v", resp.Data["expires_at"], want)
			}
			created, err := time.Parse(time.RFC3339, resp.Data["created_at"].(string))
			if err != nil {
				t.Fatal(err)
			}
			if d := now.Sub(created); d < 49990*time.Second || d > 50010*time.Second {
				t.Errorf("created_at is %v before now, want Connect's 50000s", d)
			}
		})
	}
}

// An exclusive token that arrives unusable is revoked at Connect before the
// error is returned: too short to lease, or in a 200 whose body fails checks.
func TestUnusableExclusiveTokenIsRevoked(t *testing.T) {
	for name, body := range map[string]string{
		"too short to lease": `{"access_token":"{access_token}","token_type":"Bearer","expires_in":0.5}`,
		"not Bearer":         `{"access_token":"{access_token}","token_type":"mac","expires_in":86400}`,
	} {
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
			e.fake.ResetCounters()
			e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{AfterHandling: true, Status: 200, Body: body})
			resp, err := e.do(logical.ReadOperation, "creds/cc-excl", nil)
			if err == nil && !resp.IsError() {
				t.Fatal("an unusable token was handed out")
			}
			if codedStatus(err) != http.StatusBadGateway {
				t.Errorf("error %v, want a 502", err)
			}
			for _, info := range e.fake.Tokens() {
				if !info.Revoked {
					t.Error("the unusable token is still live at Connect")
				}
			}
			if e.fake.Revocations() != 1 {
				t.Errorf("revocations = %d, want 1", e.fake.Revocations())
			}
			if keys := walKeys(t, e.storage); len(keys) != 0 {
				t.Errorf("%d write-ahead log entries left", len(keys))
			}
		})
	}
}
