package instacart

import (
	"context"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

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
