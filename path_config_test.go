package instacart

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

func TestConfigWriteRead(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	if got := e.fake.Mints(); got != 1 {
		t.Errorf("verify minted %d tokens, want 1", got)
	}
	if got := e.fake.Revocations(); got != 1 {
		t.Errorf("the verification token was revoked %d times, want 1", got)
	}

	resp := e.mustOK(logical.ReadOperation, "config", nil)
	want := map[string]any{
		"client_id":            testClientID,
		"client_secret_set":    true,
		"base_url":             e.fake.URL,
		"request_timeout":      int64(10),
		"max_retries":          2,
		"max_concurrent_mints": defaultMaxConcurrentMints,
	}
	if !reflect.DeepEqual(resp.Data, want) {
		t.Errorf("read config = %v, want %v", resp.Data, want)
	}

	// A partial update keeps the other fields and does not re-verify
	// unchanged credentials.
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "90s"})
	resp = e.mustOK(logical.ReadOperation, "config", nil)
	if resp.Data["request_timeout"] != int64(90) || resp.Data["client_id"] != testClientID {
		t.Errorf("after partial update: %v", resp.Data)
	}
	// Reads give seconds, as the README says, and a value read back writes
	// the same duration again.
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": resp.Data["request_timeout"]})
	if got := e.mustOK(logical.ReadOperation, "config", nil).Data["request_timeout"]; got != int64(90) {
		t.Errorf("request_timeout written back as read: reads %v, want 90", got)
	}
	if got := e.fake.Mints(); got != 1 {
		t.Errorf("unchanged credentials were verified again (%d mints)", got)
	}

	e.mustOK(logical.DeleteOperation, "config", nil)
	if resp, err := e.do(logical.ReadOperation, "config", nil); err != nil || resp != nil {
		t.Errorf("read after delete: %v %v", resp, err)
	}
}

func TestConfigValidation(t *testing.T) {
	base := func(e *testEnv) map[string]any {
		return map[string]any{"client_id": testClientID, "client_secret": testSecret, "base_url": e.fake.URL}
	}
	tests := []struct {
		name  string
		mod   map[string]any
		drop  string
		field string
	}{
		{name: "missing client_id", drop: "client_id", field: "client_id"},
		{name: "blank client_id", mod: map[string]any{"client_id": "  "}, field: "client_id"},
		{name: "client_id with newline", mod: map[string]any{"client_id": "a\nb"}, field: "client_id"},
		{name: "missing client_secret", drop: "client_secret", field: "client_secret"},
		{name: "http non-loopback", mod: map[string]any{"base_url": "http://connect.instacart.com"}, field: "base_url"},
		{name: "ftp", mod: map[string]any{"base_url": "ftp://127.0.0.1"}, field: "base_url"},
		{name: "relative", mod: map[string]any{"base_url": "connect.instacart.com"}, field: "base_url"},
		{name: "userinfo", mod: map[string]any{"base_url": "https://user:pw@connect.instacart.com"}, field: "base_url"},
		{name: "query", mod: map[string]any{"base_url": "https://connect.instacart.com/?client_id=x"}, field: "base_url"},
		{name: "zero timeout", mod: map[string]any{"request_timeout": 0}, field: "request_timeout"},
		{name: "negative timeout", mod: map[string]any{"request_timeout": "-5s"}, field: "request_timeout"},
		{name: "huge timeout", mod: map[string]any{"request_timeout": "1h"}, field: "request_timeout"},
		{name: "bad duration", mod: map[string]any{"request_timeout": "soon"}, field: "request_timeout"},
		{name: "negative retries", mod: map[string]any{"max_retries": -1}, field: "max_retries"},
		{name: "too many retries", mod: map[string]any{"max_retries": 11}, field: "max_retries"},
		{name: "zero mints", mod: map[string]any{"max_concurrent_mints": 0}, field: "max_concurrent_mints"},
		{name: "too many mints", mod: map[string]any{"max_concurrent_mints": 5000}, field: "max_concurrent_mints"},
		{name: "wrong secret (verify)", mod: map[string]any{"client_secret": "wrong-secret-value"}, field: "invalid_client"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			data := base(e)
			for k, v := range tc.mod {
				data[k] = v
			}
			delete(data, tc.drop)
			before := e.storageSnapshot()
			resp, err := e.do(logical.UpdateOperation, "config", data)
			expectError(t, resp, err, tc.field)
			if after := e.storageSnapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("storage changed by a rejected write: %v", slices.Sorted(maps.Keys(after)))
			}
		})
	}
}

func TestConfigVerifyCanBeSkipped(t *testing.T) {
	e := newTestEnv(t)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{
		"client_id": testClientID, "client_secret": "wrong-secret-value", "base_url": e.fake.URL, "verify": false,
	})
	if e.fake.Requests(connectfake.PathToken) != 0 {
		t.Error("verify=false still called Connect")
	}
	// The bad secret now surfaces at creds time, as a 400 naming Instacart's code.
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"grant_type": "client_credentials"})
	resp, err := e.do(logical.ReadOperation, "creds/cc", nil)
	expectError(t, resp, err, "invalid_client")
	if got := e.fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("invalid_client was retried: %d requests", got)
	}
}

func TestConfigNeverReturnsSecret(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	resp := e.mustOK(logical.ReadOperation, "config", nil)
	b, _ := json.Marshal(resp)
	if strings.Contains(string(b), testSecret) || resp.Data["client_secret"] != nil {
		t.Error("config read returned the client secret")
	}
}

func TestNormalizeBaseURL(t *testing.T) {
	ok := map[string]string{
		"https://connect.instacart.com/":       "https://connect.instacart.com",
		"https://connect.dev.instacart.tools":  "https://connect.dev.instacart.tools",
		"http://127.0.0.1:8080":                "http://127.0.0.1:8080",
		"http://localhost:1234/":               "http://localhost:1234",
		"http://[::1]:9999":                    "http://[::1]:9999",
		" https://connect.instacart.com/base/": "https://connect.instacart.com/base",
	}
	for in, want := range ok {
		if got, err := normalizeBaseURL(in); err != nil || got != want {
			t.Errorf("normalizeBaseURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "http://10.0.0.1", "http://localhost.evil.com", "https://", "mailto:x@y", "https://a.b/#frag", "javascript:alert(1)"} {
		if got, err := normalizeBaseURL(bad); err == nil {
			t.Errorf("normalizeBaseURL(%q) = %q, want an error", bad, got)
		}
	}
}

func TestRejectedCredentialsStopHammeringConnect(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.fake.RemoveClient(testClientID) // Instacart disabled the application
	for range 5 {
		resp, err := e.do(logical.ReadOperation, "creds/cc-excl", nil)
		expectError(t, resp, err, "invalid_client")
	}
	if got := e.fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("5 reads with refused credentials reached Connect %d times, want 1", got)
	}
	// New credentials end the hold at once.
	e.fake.AddClient("test-client-2", "fake-second-secret-for-tests-98765")
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": "test-client-2", "client_secret": "fake-second-secret-for-tests-98765"})
	e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
}

// recordingListener is a loopback HTTP server that records every request
// body it receives and answers like Connect would to unknown credentials.
func recordingListener(t *testing.T) (url string, bodies func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, string(b))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"unknown client"}`)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// The stored secret is write-only: a write that points the engine at another
// host or client id without bringing its own secret is refused before
// anything is sent or stored, so update on config cannot exfiltrate it.
func TestConfigMoveRequiresSecret(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	listener, bodies := recordingListener(t)
	before := e.storageSnapshot()

	for _, tc := range []struct {
		name string
		data map[string]any
	}{
		{"base_url", map[string]any{"base_url": listener}},
		{"base_url, verify=false", map[string]any{"base_url": listener, "verify": false}},
		{"client_id", map[string]any{"client_id": "someone-else"}},
		{"client_id and base_url", map[string]any{"client_id": "someone-else", "base_url": listener, "verify": false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.do(logical.UpdateOperation, "config", tc.data)
			expectError(t, resp, err, "client_secret")
		})
	}
	if !reflect.DeepEqual(before, e.storageSnapshot()) {
		t.Error("a refused write changed storage")
	}
	// Reads and lease revocations still go to the host the secret was written for.
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"grant_type": "client_credentials"})
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	for _, b := range bodies() {
		if strings.Contains(b, testSecret) {
			t.Fatal("the stored client secret was sent to a host it was not written for")
		}
	}
	if n := len(bodies()); n != 0 {
		t.Errorf("the other host received %d requests", n)
	}

	// Moving with a secret of its own is fine: the new host sees that one only.
	const other = "a-different-placeholder-secret"
	resp, err := e.do(logical.UpdateOperation, "config", map[string]any{"base_url": listener, "client_secret": other})
	expectError(t, resp, err, "invalid_client") // the listener refuses it, so nothing is saved
	for _, b := range bodies() {
		if strings.Contains(b, testSecret) {
			t.Fatal("the stored client secret was sent along with the new one")
		}
	}
	if len(bodies()) != 1 || !strings.Contains(bodies()[0], other) {
		t.Errorf("want one verify request carrying the new secret, got %d requests", len(bodies()))
	}
}

// Deleting the config keeps its credentials (never returned) until the
// tokens they minted have expired, so a lease revoked after the delete still
// kills its token at Connect; then they are pruned.
func TestConfigDeleteKeepsCredentialsToRevoke(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	lease := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := lease.Data["access_token"].(string)

	e.mustOK(logical.DeleteOperation, "config", nil)
	if resp, err := e.do(logical.ReadOperation, "config", nil); err != nil || resp != nil {
		t.Errorf("read after delete: %v %v", resp, err)
	}
	resp, err := e.do(logical.ReadOperation, "creds/cc", nil)
	expectError(t, resp, err, "not configured")

	if err := revoke(e, lease.Secret); err != nil {
		t.Fatalf("revoking a lease after config delete: %v", err)
	}
	if e.fake.TokenLive(tok) {
		t.Fatal("the token of a lease revoked after config delete is still live at Connect")
	}

	// A new config needs its secret; the retired credentials stay with it.
	resp, err = e.do(logical.UpdateOperation, "config", map[string]any{"client_id": testClientID, "base_url": e.fake.URL})
	expectError(t, resp, err, "client_secret")

	// Once every token has expired, the periodic prune removes the entry.
	e.advance(25 * time.Hour)
	if _, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Path: "", Storage: e.storage}); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if _, ok := e.storageSnapshot()[configStoragePath]; ok {
		t.Error("the deleted config's credentials outlived every token they minted")
	}
}

// Connect answers the credentials check with an unusable 200 that names a
// token it minted, and cannot take its revocation at first: the credentials
// are saved (Connect minted with them) and the token waits in the revocation
// queue, which revokes it once Connect is back. Unsaved, one failed try left
// it live with nothing to retry it (found by the schedule explorer, I2).
func TestVerifyWithAnUnusableAnswerQueuesItsToken(t *testing.T) {
	e := newTestEnv(t)
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{AfterHandling: true, Status: http.StatusOK,
		Body: `{"access_token":"` + connectfake.PlaceholderAccessToken + `","token_type":"Bearer","expires_in":"soon"}`})
	e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(4)...) // the try and its 3 retries
	e.configure()
	if cfg, err := getConfig(context.Background(), e.storage); err != nil || !cfg.configured() {
		t.Fatalf("the credentials were not saved (err %v)", err)
	}
	queued := queuedFor(t, e.storage, verifyQueue)
	if len(queued) != 1 {
		t.Fatalf("%d tokens queued for revocation, want the one the check minted", len(queued))
	}
	live := 0
	for _, tok := range e.fake.Tokens() {
		if !tok.Revoked {
			live++
		}
	}
	if live != 1 {
		t.Fatalf("%d live tokens at Connect, want the check's, still queued", live)
	}
	if err := e.b.periodic(context.Background(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatalf("periodic: %v", err)
	}
	if n := len(queuedFor(t, e.storage, verifyQueue)); n != 0 {
		t.Errorf("%d tokens still queued after Connect came back", n)
	}
	for _, tok := range e.fake.Tokens() {
		if !tok.Revoked {
			t.Error("the check's token is still live after the retry")
		}
	}
}

// A config write whose caller leaves as the config is saved fails, and the
// token minted to verify the unsaved credentials is still revoked: the
// revocation does not end with the request (the explorer's I2, seed 281).
func TestVerifyTokenOfUnsavedConfigRevokedAfterCallerLeaves(t *testing.T) {
	e := newTestEnv(t)
	g := gateStorage(e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.failPut = func(key string) error {
		if key != configStoragePath {
			return nil
		}
		cancel() // the caller leaves; the write fails with its context
		return context.Canceled
	}
	_, err := e.doCtx(ctx, logical.UpdateOperation, "config", map[string]any{
		"client_id": testClientID, "client_secret": testSecret, "base_url": e.fake.URL, "verify": true,
	})
	if err == nil {
		t.Fatal("the config write succeeded though its storage write failed")
	}
	awaitBackground(t, e.b) // the revocation is tried in the background
	toks := e.fake.Tokens()
	if len(toks) != 1 {
		t.Fatalf("%d tokens minted, want the one verify token", len(toks))
	}
	if !toks[0].Revoked {
		t.Error("the verify token of credentials that were never saved was left live")
	}
}

// Writing the stored client_secret again is no rotation: the write warns that
// the credentials are unchanged and keeps serving their token, while a write
// of a new secret, or of other fields only, does not warn.
func TestConfigWriteOfUnchangedCredentialsWarns(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"grant_type": "client_credentials"})
	served := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	mints := e.fake.Mints()

	hasWarning := func(resp *logical.Response) bool {
		return resp != nil && slices.ContainsFunc(resp.Warnings, func(w string) bool {
			return strings.HasPrefix(w, "client_id and client_secret are unchanged:")
		})
	}
	for _, data := range []map[string]any{
		{"client_secret": testSecret},
		{"client_id": testClientID, "client_secret": testSecret, "base_url": e.fake.URL},
	} {
		if resp := e.mustOK(logical.UpdateOperation, "config", data); !hasWarning(resp) {
			t.Errorf("write of the stored credentials (%v): warnings %v, want one saying they are unchanged", slices.Sorted(maps.Keys(data)), resp)
		}
	}
	if got := e.fake.Mints(); got != mints {
		t.Errorf("writing the same credentials minted %d tokens", got-mints)
	}
	if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got != served {
		t.Error("writing the same credentials replaced the served token")
	}

	if resp := e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "30s"}); hasWarning(resp) {
		t.Errorf("a write without client_secret warned: %v", resp.Warnings)
	}
	const rotated = "a-rotated-placeholder-secret"
	e.fake.AddClientSecret(testClientID, rotated)
	if resp := e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_secret": rotated}); hasWarning(resp) {
		t.Errorf("a rotation warned that the credentials are unchanged: %v", resp.Warnings)
	}
	if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got == served {
		t.Error("after a rotation the old credentials' token is still served")
	}
}
