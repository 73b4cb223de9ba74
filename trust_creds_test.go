package instacart

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// codedStatus returns the HTTP status a coded error carries (0 if none).
func codedStatus(err error) int {
	var coded logical.HTTPCodedError
	if errors.As(err, &coded) {
		return coded.Code()
	}
	return 0
}

// An authorization code is single-use: once a request carrying it reached
// Connect and the answer was lost, it is not sent again, and the caller is
// told to get a new code.
func TestAuthorizationCodeIsNeverSentTwice(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  connectfake.Fault
		status int
	}{
		{"reset after Connect processed it", connectfake.Fault{AfterHandling: true, Reset: true}, http.StatusBadGateway},
		{"500 after Connect processed it", connectfake.Fault{AfterHandling: true, Status: 500}, http.StatusBadGateway},
		{"no answer in time", connectfake.Fault{AfterHandling: true, Hang: true}, http.StatusGatewayTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "1s", "max_retries": 3})
			e.fake.ResetCounters()
			code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
			e.fake.InjectFaults(connectfake.PathToken, tc.fault)

			_, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
			if got := codedStatus(err); got != tc.status {
				t.Fatalf("status %d (%v), want %d", got, err, tc.status)
			}
			if !strings.Contains(err.Error(), "new code") {
				t.Errorf("error does not tell the caller to get a new code: %v", err)
			}
			if got := e.fake.Requests(connectfake.PathToken); got != 1 {
				t.Errorf("the code was sent %d times, want once", got)
			}
			// A client retrying the failed write (the Vault CLI retries 5xx
			// answers by itself) gets a 400; Connect never sees it again.
			resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
			expectError(t, resp, err, "already sent")
			if got := e.fake.Requests(connectfake.PathToken); got != 1 {
				t.Errorf("a retry sent the code again (%d requests)", got)
			}
		})
	}

	t.Run("a code Connect turned away (429/503 to the end) may be sent again", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 1})
		code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 429, RetryAfter: "0"})
		_, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
		if codedStatus(err) != http.StatusBadGateway || strings.Contains(err.Error(), "new code") {
			t.Fatalf("err = %v, want a plain 502 (the code was not processed)", err)
		}
		e.mustOK(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	})

	t.Run("429 and 503 are retried: Connect did not process them", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 429, RetryAfter: "0"}, connectfake.Fault{Status: 503})
		resp := e.mustOK(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
		if usersStatus(t, e.fake.URL, resp.Data["access_token"].(string)) != 200 {
			t.Error("the linking token does not work")
		}
		if got := e.fake.Requests(connectfake.PathToken); got != 3 {
			t.Errorf("token requests = %d, want 3", got)
		}
	})

	t.Run("other grants still retry", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{AfterHandling: true, Status: 500})
		e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
		if got := e.fake.Requests(connectfake.PathToken); got != 2 {
			t.Errorf("token requests = %d, want 2", got)
		}
	})
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

// A shared token with under a second left (min_remaining_ttl=0) is replaced
// by a fresh mint instead of failing the read.
func TestSharedTokenWithUnderASecondLeftIsReplaced(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"min_remaining_ttl": 0})
	now := time.Now()
	e.b.now = func() time.Time { return now }
	first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]

	now = now.Add(24*time.Hour - 500*time.Millisecond)
	resp := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if resp.Data["access_token"] == first {
		t.Error("a token with half a second left was handed out again")
	}
	if resp.Secret.TTL < time.Hour {
		t.Errorf("lease TTL %v: the replacement is not fresh", resp.Secret.TTL)
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

// A deadline on a Connect call is a 504, as the Errors table promises.
func TestConnectDeadlineIs504(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "1s", "max_retries": 0})
	for _, role := range []string{"cc", "cc-excl"} {
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true})
		_, err := e.do(logical.ReadOperation, "creds/"+role, nil)
		if got := codedStatus(err); got != http.StatusGatewayTimeout {
			t.Errorf("%s: status %d (%v), want 504", role, got, err)
		}
	}
}

// On a performance standby storage refuses writes with logical.ErrReadOnly;
// returning exactly that is how Vault knows to forward the request to the
// active node. No token minted there may be kept in memory only.
func TestReadOnlyStorageForwardsToActive(t *testing.T) {
	t.Run("storage refuses the write", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		g := gateStorage(e)
		g.readOnly.Store(true)
		for _, path := range []string{"creds/cc", "creds/cc-excl"} {
			_, err := e.do(logical.ReadOperation, path, nil)
			if err != logical.ErrReadOnly {
				t.Errorf("%s: err = %v, want logical.ErrReadOnly", path, err)
			}
		}
		for _, info := range e.fake.Tokens() {
			if !info.Revoked {
				t.Error("a token minted on read-only storage is live and held nowhere")
			}
		}
		if e.b.tokens.get(tokenKey("cc", "")) != nil {
			t.Error("a shared token was kept in memory only")
		}
		if e.fake.Mints() > 1 {
			t.Errorf("mints = %d: the exclusive read minted before finding storage read-only", e.fake.Mints())
		}
		_, err := e.do(logical.UpdateOperation, "roles/new", map[string]any{"grant_type": "client_credentials"})
		if err != logical.ErrReadOnly {
			t.Errorf("role write: err = %v, want logical.ErrReadOnly", err)
		}
		_, err = e.do(logical.DeleteOperation, "config", nil)
		if err != logical.ErrReadOnly {
			t.Errorf("config delete: err = %v, want logical.ErrReadOnly", err)
		}
	})

	t.Run("a performance standby forwards before minting", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		cached := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
		e.b.tokens.clear()
		e.fake.ResetCounters()
		e.sys.ReplicationStateVal = consts.ReplicationPerformanceStandby
		if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got != cached {
			t.Error("a standby did not serve the stored shared token")
		}
		if _, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-9"}); err != logical.ErrReadOnly {
			t.Errorf("cold shared read on a standby: err = %v, want logical.ErrReadOnly", err)
		}
		// Config writes and flushes are forwarded before they call Connect.
		const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
		e.fake.AddClient(newID, newSecret)
		if _, err := e.do(logical.UpdateOperation, "config", map[string]any{"client_id": newID, "client_secret": newSecret}); err != logical.ErrReadOnly {
			t.Errorf("config write on a standby: err = %v, want logical.ErrReadOnly", err)
		}
		if _, err := e.do(logical.DeleteOperation, "cache/cc", nil); err != logical.ErrReadOnly {
			t.Errorf("flush on a standby: err = %v, want logical.ErrReadOnly", err)
		}
		if e.fake.Mints() != 0 || e.fake.Revocations() != 0 {
			t.Errorf("a standby minted %d and revoked %d tokens", e.fake.Mints(), e.fake.Revocations())
		}
	})
}

func TestTokensAreSealWrapped(t *testing.T) {
	e := newTestEnv(t)
	wrapped := e.b.PathsSpecial.SealWrapStorage
	for _, want := range []string{configStoragePath, tokenStoragePrefix, revokingStoragePrefix, "wal/"} {
		found := false
		for _, p := range wrapped {
			found = found || p == want
		}
		if !found {
			t.Errorf("%q is not seal-wrapped (%v)", want, wrapped)
		}
	}
}

// A token minted but never leased (the plugin died, or an error struck
// between the mint and the response) is revoked by Vault's WAL rollback.
func TestExclusiveMintIsCoveredByTheWAL(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	if keys := walKeys(t, e.storage); len(keys) != 0 {
		t.Fatalf("a successful read left %d write-ahead log entries", len(keys))
	}

	// The response cannot be completed and Connect cannot take the
	// revocation right now: the token is left to the WAL.
	g := gateStorage(e)
	g.failDelete = func(key string) error {
		if strings.HasPrefix(key, "wal/") && len(walKeys(t, g.Storage)) == 1 {
			return errors.New("storage unavailable")
		}
		return nil
	}
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	if _, err := e.do(logical.ReadOperation, "creds/cc-excl", nil); err == nil {
		t.Fatal("the read succeeded though its WAL entry could not be completed")
	}
	g.failDelete = nil
	keys := walKeys(t, e.storage)
	if len(keys) != 1 {
		t.Fatalf("%d write-ahead log entries, want 1 naming the token", len(keys))
	}
	entry, err := framework.GetWAL(context.Background(), e.storage, keys[0])
	if err != nil || entry == nil {
		t.Fatalf("reading the WAL entry: %v", err)
	}
	orphan, _ := entry.Data.(map[string]any)["access_token"].(string)
	if orphan == "" || !e.fake.TokenLive(orphan) {
		t.Fatal("the WAL entry does not name the live, unleased token")
	}

	rollback := func() {
		t.Helper()
		req := &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage, Data: map[string]any{"immediate": true}}
		if _, err := e.b.HandleRequest(context.Background(), req); err != nil {
			t.Fatalf("rollback: %v", err)
		}
	}
	rollback()
	if e.fake.TokenLive(orphan) {
		t.Error("the WAL rollback did not revoke the unleased token")
	}
	if keys := walKeys(t, e.storage); len(keys) != 0 {
		t.Errorf("%d write-ahead log entries left after the rollback", len(keys))
	}
}

// The rollback function itself: a transient failure is returned (Vault tries
// again), an entry recorded before Connect answered has nothing to revoke.
func TestWALRollbackFunction(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := resp.Data["access_token"].(string)
	cfg, err := getConfig(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	expires, _ := time.Parse(time.RFC3339, resp.Data["expires_at"].(string))
	data := map[string]any{"role": "cc-excl", "credentials_id": cfg.CredentialsID, "access_token": tok, "expires_at": expires.Format(time.RFC3339Nano)}
	req := &logical.Request{Storage: e.storage}

	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	if err := e.b.walRollback(context.Background(), req, walKindExclusiveToken, data); err == nil {
		t.Error("a failed revocation was reported as rolled back")
	}
	if err := e.b.walRollback(context.Background(), req, walKindExclusiveToken, data); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if e.fake.TokenLive(tok) {
		t.Error("rollback did not revoke the token")
	}
	intent := map[string]any{"role": "cc-excl", "credentials_id": cfg.CredentialsID}
	if err := e.b.walRollback(context.Background(), req, walKindExclusiveToken, intent); err != nil {
		t.Errorf("rolling back a mint that never got an answer: %v", err)
	}
}

// gatedConnect puts a gate in front of the fake: each token request waits
// until the test releases it, then is served by the fake as usual.
func gatedConnect(t *testing.T, fake *connectfake.Server) (url string, arrived <-chan struct{}, release chan<- struct{}) {
	t.Helper()
	in := make(chan struct{}, 16)
	out := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == connectfake.PathToken {
			in <- struct{}{}
			<-out
		}
		fake.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(func() { srv.Close() })
	return srv.URL, in, out
}

// An exclusive mint the caller gives up on (the app disconnects, its deadline
// passes) while Connect is minting is still seen through, and the token that
// arrives is revoked: nobody will ever hold its lease.
func TestAbandonedExclusiveMintIsRevoked(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	url, arrived, release := gatedConnect(t, e.fake)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": url, "client_secret": testSecret, "verify": false})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := e.doCtx(ctx, logical.ReadOperation, "creds/cc-excl", nil)
		done <- err
	}()
	<-arrived // the token request is at Connect
	cancel()  // the caller gives up
	if err := <-done; codedStatus(err) != http.StatusGatewayTimeout {
		t.Fatalf("abandoned read: err = %v, want a 504", err)
	}
	close(release) // Connect answers after all
	if !waitUntil(func() bool { return e.fake.Mints() == 1 && e.fake.Revocations() == 1 }) {
		t.Fatalf("mints %d, revocations %d: the abandoned token was not revoked", e.fake.Mints(), e.fake.Revocations())
	}
	for _, info := range e.fake.Tokens() {
		if !info.Revoked {
			t.Error("the abandoned token is live at Connect")
		}
	}
	if !waitUntil(func() bool { return len(walKeys(t, e.storage)) == 0 }) {
		t.Errorf("%d write-ahead log entries left", len(walKeys(t, e.storage)))
	}
}

// waitUntil polls cond for what happens on a goroutine the test cannot join
// (a detached clean-up); the bound only keeps a broken build from hanging.
func waitUntil(cond func() bool) bool { return waitFor(10*time.Second, cond) }

func waitFor(bound time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(bound); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// Retired credentials outlive the longest token Connect handed out, even
// when that is longer than documented and the process restarted since.
func TestRetentionOfLongLivedTokensSurvivesRestart(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.fake.SetTokenLifetime(72 * time.Hour)
	lease := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := lease.Data["access_token"].(string)

	e.b = reloadBackend(t, e) // a restart forgets what was seen in memory
	const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
	e.fake.AddClient(newID, newSecret)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": newID, "client_secret": newSecret})
	e.advance(48 * time.Hour)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 1}) // prunes what has expired
	if err := revoke(e, lease.Secret); err != nil {
		t.Fatal(err)
	}
	if e.fake.TokenLive(tok) {
		t.Error("a 72 h token outlived the credentials kept to revoke it")
	}
}

// user_id refuses control characters, C1 controls and invisible overrides.
func TestUserIDRefusesInvisibleCharacters(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	for _, id := range []string{"store-1\x00", "store-\n1", "store-\u0085", "store-\u202e1", "store-\u2028"} {
		resp, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": id})
		expectError(t, resp, err, "user_id")
	}
	if e.fake.Mints() != 0 {
		t.Errorf("%d tokens minted for refused ids", e.fake.Mints())
	}
}
