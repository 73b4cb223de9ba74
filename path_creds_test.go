package instacart

import (
	"context"
	"reflect"
	"strings"
	"sync"
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

func TestSharedAndExclusiveReuse(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)

	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	second := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	if first != second || e.fake.Mints() != 1 {
		t.Errorf("shared role: tokens equal %v, mints %d", first == second, e.fake.Mints())
	}

	a := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil).Data["access_token"]
	b := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil).Data["access_token"]
	if a == b || e.fake.Mints() != 3 {
		t.Errorf("exclusive role: tokens equal %v, mints %d", a == b, e.fake.Mints())
	}

	// Assertion roles share one token per user.
	u1 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}).Data["access_token"]
	u2 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-2"}).Data["access_token"]
	u1again := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}).Data["access_token"]
	if u1 == u2 || u1 != u1again || e.fake.Mints() != 5 {
		t.Errorf("per-user sharing: u1==u2 %v, u1 stable %v, mints %d", u1 == u2, u1 == u1again, e.fake.Mints())
	}
}

func TestConcurrentColdReadsMintOnce(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.fake.SetLatency(50 * time.Millisecond) // keep the flight open while readers pile up

	const readers = 100
	var wg sync.WaitGroup
	tokens := make([]string, readers)
	errs := make([]error, readers)
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.do(logical.ReadOperation, "creds/cc", nil)
			if err == nil && resp.IsError() {
				err = resp.Error()
			}
			if err == nil {
				tokens[i] = resp.Data["access_token"].(string)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
		if tokens[i] != tokens[0] {
			t.Fatalf("reader %d got a different token", i)
		}
	}
	if got := e.fake.Mints(); got != 1 {
		t.Errorf("%d concurrent cold reads minted %d tokens, want 1", readers, got)
	}
}

func TestLeaseCaps(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)

	resp := e.mustOK(logical.ReadOperation, "creds/cc-capped", nil)
	if resp.Secret.TTL != time.Hour || resp.Secret.MaxTTL != 2*time.Hour {
		t.Errorf("role caps: ttl %v max %v", resp.Secret.TTL, resp.Secret.MaxTTL)
	}
	if len(resp.Warnings) != 2 || !strings.Contains(resp.Warnings[0], "max_ttl") || !strings.Contains(resp.Warnings[1], "role's ttl") {
		t.Errorf("warnings = %q", resp.Warnings)
	}

	// Uncapped: the lease is the token's remaining life, no warnings. The
	// mount's max_lease_ttl is Vault's to apply when it registers the lease
	// (see e2e "lease caps"), so the backend never asks for it per read.
	e.sys.MaxLeaseTTLVal = 30 * time.Minute
	resp = e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if len(resp.Warnings) != 0 || resp.Secret.TTL < 24*time.Hour-2*time.Second {
		t.Errorf("uncapped: ttl %v warnings %q", resp.Secret.TTL, resp.Warnings)
	}
}

func TestLeaseTTLTracksSharedTokenAge(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	e.advance(5 * time.Hour)
	resp := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if want := 19 * time.Hour; resp.Secret.TTL > want+2*time.Second || resp.Secret.TTL < want-2*time.Second {
		t.Errorf("lease of a 5h-old shared token: %v, want about %v", resp.Secret.TTL, want)
	}
	if e.fake.Mints() != 1 {
		t.Errorf("mints = %d", e.fake.Mints())
	}
}

func renew(e *testEnv, secret *logical.Secret, increment time.Duration) (*logical.Response, error) {
	s := *secret
	s.IssueTime = time.Now()
	s.Increment = increment
	return e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.RenewOperation, Secret: &s, Storage: e.storage})
}

func revoke(e *testEnv, secret *logical.Secret) error {
	_, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.RevokeOperation, Secret: secret, Storage: e.storage})
	return err
}

func TestRenewNeverPastExpiry(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	expires, _ := time.Parse(time.RFC3339, resp.Data["expires_at"].(string))

	r, err := renew(e, resp.Secret, 48*time.Hour)
	if err != nil || r.IsError() {
		t.Fatalf("renew: %v %v", r, err)
	}
	// Vault caps the increment at IssueTime+MaxTTL; MaxTTL must end at the token's expiry.
	if end := r.Secret.IssueTime.Add(r.Secret.MaxTTL); end.After(expires) || end.Before(expires.Add(-2*time.Second)) {
		t.Errorf("renewal ceiling %v, token expires %v", end, expires)
	}
	if r.Secret.TTL > time.Until(expires) {
		t.Errorf("renewed TTL %v beyond remaining %v", r.Secret.TTL, time.Until(expires))
	}

	e.advance(25 * time.Hour)
	r, err = renew(e, resp.Secret, time.Hour)
	if err != nil || r == nil || !r.IsError() || !strings.Contains(r.Error().Error(), "expired") {
		t.Errorf("renew after expiry: %v %v", r, err)
	}
}

func TestRevokeExclusiveButNotShared(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)

	excl := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := excl.Data["access_token"].(string)
	if err := revoke(e, excl.Secret); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if e.fake.Requests(connectfake.PathRevoke) != 1 || e.fake.TokenLive(tok) {
		t.Errorf("exclusive revoke: %d revoke calls, live %v", e.fake.Requests(connectfake.PathRevoke), e.fake.TokenLive(tok))
	}
	if got := usersStatus(t, e.fake.URL, tok); got != 401 {
		t.Errorf("revoked token: Connect answered %d, want 401", got)
	}

	shared := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if err := revoke(e, shared.Secret); err != nil {
		t.Fatalf("revoke shared: %v", err)
	}
	if e.fake.Requests(connectfake.PathRevoke) != 1 || !e.fake.TokenLive(shared.Data["access_token"].(string)) {
		t.Error("revoking a shared lease revoked the token upstream")
	}
	// Other readers keep getting the same live token.
	again := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if again.Data["access_token"] != shared.Data["access_token"] {
		t.Error("shared token replaced after a lease revoke")
	}
}

func TestRevokeExpiredTokenSkipsConnect(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	e.advance(25 * time.Hour)
	if err := revoke(e, resp.Secret); err != nil {
		t.Fatalf("revoke of an expired token: %v", err)
	}
	if got := e.fake.Requests(connectfake.PathRevoke); got != 0 {
		t.Errorf("expired token revoke called Connect %d times", got)
	}
}

func TestRevokeRetriesWhenConnectIsDown(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := resp.Data["access_token"].(string)

	// Down for longer than one call's retries: the revoke fails so Vault retries it.
	faults := make([]connectfake.Fault, 3)
	for i := range faults {
		faults[i] = connectfake.Fault{Status: 503}
	}
	e.fake.InjectFaults(connectfake.PathRevoke, faults...)
	if err := revoke(e, resp.Secret); err == nil {
		t.Fatal("revoke with Connect down succeeded; Vault would never retry it")
	}
	if !e.fake.TokenLive(tok) {
		t.Fatal("token revoked despite the failure")
	}
	// Connect recovers: Vault's retry revokes it.
	if err := revoke(e, resp.Secret); err != nil {
		t.Fatalf("revoke after recovery: %v", err)
	}
	if e.fake.TokenLive(tok) {
		t.Error("token still live after recovery")
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
			if after := e.storageSnapshot(); !reflect.DeepEqual(before, after) {
				t.Error("storage changed")
			}
		})
	}
	if got := e.fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("Connect saw %d token requests; only the bad code should reach it, once", got)
	}
}

// A code is sent to Connect once: a second use (a client's retry, a replay)
// is refused here, without asking Connect, naming the field.
func TestAuthorizationCodeIsSingleUse(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
	e.mustOK(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	before := e.storageSnapshot()
	resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	expectError(t, resp, err, "code: this authorization code was already sent")
	if got := e.fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("Connect saw the code %d times, want once", got)
	}
	if !reflect.DeepEqual(before, e.storageSnapshot()) {
		t.Error("a refused code changed storage")
	}
	// A code Connect itself refuses (never issued) is still Connect's to judge.
	resp, err = e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": "never-issued"})
	expectError(t, resp, err, "invalid_grant")
	// Records of sent codes are pruned once no code could still be valid.
	e.advance(codeRecordTTL)
	if err := e.b.pruneCodes(context.Background(), e.storage); err != nil {
		t.Fatal(err)
	}
	for k := range e.storageSnapshot() {
		if strings.HasPrefix(k, codeStoragePrefix) {
			t.Errorf("code record %s outlived its TTL", k)
		}
	}
}

func TestSharedTokenReplacedNearExpiry(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	e.advance(22*time.Hour + 30*time.Minute) // 1h30m left: still above min_remaining_ttl
	if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got != first {
		t.Error("replaced too early")
	}
	e.advance(time.Hour) // 30m left: below the default 1h
	second := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	if second == first || e.fake.Mints() != 2 {
		t.Errorf("not replaced near expiry (mints %d)", e.fake.Mints())
	}
}

func TestShortLivedTokensAreNotMintedPerRead(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.fake.SetTokenLifetime(time.Minute) // shorter than min_remaining_ttl (1h)
	for range 5 {
		e.mustOK(logical.ReadOperation, "creds/cc", nil)
	}
	if got := e.fake.Mints(); got != 1 {
		t.Errorf("5 reads of a 60 s token minted %d times, want 1", got)
	}
}

func TestServesCachedTokenWhileConnectIsDown(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	e.advance(23*time.Hour + 30*time.Minute) // inside min_remaining_ttl: a refresh is due
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	resp := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if resp.Data["access_token"] != first || len(resp.Warnings) == 0 {
		t.Errorf("want the cached token with a warning, got warnings %q", resp.Warnings)
	}
	// Once it has expired there is nothing safe to serve.
	e.advance(time.Hour)
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	if _, err := e.do(logical.ReadOperation, "creds/cc", nil); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("expired cache + Connect down: err = %v, want one naming 503", err)
	}
}

func TestSharedTokenSurvivesRestart(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]

	e.b = reloadBackend(t, e) // as after a Vault restart or plugin reload
	again := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	if again != first || e.fake.Mints() != 1 {
		t.Errorf("after restart: same token %v, mints %d", again == first, e.fake.Mints())
	}
}

func TestRoleChangeDropsSharedToken(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"scopes": "connect:fulfillment,connect:ian"})
	resp := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if resp.Data["access_token"] == first || !reflect.DeepEqual(resp.Data["scopes"], []string{"connect:fulfillment", "connect:ian"}) {
		t.Errorf("token minted for the old scopes was served: %v", resp.Data["scopes"])
	}
	// A ttl change does not touch what the token is, so it stays.
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"ttl": "2h"})
	if again := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; again != resp.Data["access_token"] {
		t.Error("ttl change dropped the shared token")
	}
}

func TestHungConnectReturnsWithinRequestDeadline(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true}, connectfake.Fault{Hang: true}, connectfake.Fault{Hang: true})
	for _, role := range []string{"cc", "cc-excl"} {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		start := time.Now()
		_, err := e.doCtx(ctx, logical.ReadOperation, "creds/"+role, nil)
		cancel()
		if err == nil {
			t.Errorf("%s: hung Connect produced no error", role)
		}
		if elapsed := time.Since(start); elapsed > 1500*time.Millisecond {
			t.Errorf("%s: returned after %v; deadline was 500ms", role, elapsed)
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

// TestBadUpstreamAnswersAreNeverCached feeds every kind of broken answer to a
// shared role's first read: each is an error (never a panic, never a token),
// nothing reaches storage, and the next read mints a working token.
func TestBadUpstreamAnswersAreNeverCached(t *testing.T) {
	faults := map[string]connectfake.Fault{
		"malformed JSON":     {Status: 200, Body: `{"access_token":`},
		"truncated JSON":     {Status: 200, Body: `{"access_token":"x","token_type":"Bearer","expi`},
		"expires_in 0":       {Status: 200, Body: `{"access_token":"x","token_type":"Bearer","expires_in":0}`},
		"expires_in -1":      {Status: 200, Body: `{"access_token":"x","token_type":"Bearer","expires_in":-1}`},
		"expires_in absurd":  {Status: 200, Body: `{"access_token":"x","token_type":"Bearer","expires_in":99999999999}`},
		"token_type mac":     {Status: 200, Body: `{"access_token":"x","token_type":"mac","expires_in":86400}`},
		"empty token":        {Status: 200, Body: `{"access_token":"","token_type":"Bearer","expires_in":86400}`},
		"connection reset":   {Reset: true},
		"500 with HTML body": {Status: 500, Body: "<html>oops</html>"},
	}
	tried := 0
	for name, fault := range faults {
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
			before := e.storageSnapshot()
			e.fake.InjectFaults(connectfake.PathToken, fault)
			resp, err := e.do(logical.ReadOperation, "creds/cc", nil)
			tried++
			if err == nil && !resp.IsError() {
				t.Fatalf("a broken answer produced a token")
			}
			if !reflect.DeepEqual(before, e.storageSnapshot()) {
				t.Errorf("a broken answer changed storage")
			}
			tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
			if usersStatus(t, e.fake.URL, tok) != 200 {
				t.Error("the token after recovery does not work")
			}
		})
	}
	t.Logf("%d broken upstream answers injected, 0 cached", tried)
}
