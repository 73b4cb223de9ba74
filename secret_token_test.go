package instacart

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

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
	_, err = renew(e, resp.Secret, time.Hour)
	if codedStatus(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "expired") {
		t.Errorf("renew after expiry: %v, want a 400 saying the token expired", err)
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

// A lease revocation Connect cannot take now is queued: the lease ends, and
// the queue revokes the token once Connect is back.
func TestRevokeRetriesWhenConnectIsDown(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := resp.Data["access_token"].(string)

	// Down for longer than one call's retries.
	faults := make([]connectfake.Fault, 3)
	for i := range faults {
		faults[i] = connectfake.Fault{Status: 503}
	}
	e.fake.InjectFaults(connectfake.PathRevoke, faults...)
	if err := revoke(e, resp.Secret); err != nil {
		t.Fatalf("revoke with Connect down: %v; it should be queued", err)
	}
	if !e.fake.TokenLive(tok) {
		t.Fatal("token revoked despite the failure")
	}
	if n := len(pendingKeys(t, e, "cc-excl")); n != 1 {
		t.Fatalf("%d queued revocations for the role, want the token", n)
	}
	// Connect recovers: the periodic retry revokes it and empties the queue.
	if err := e.b.periodic(context.Background(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatalf("periodic: %v", err)
	}
	if e.fake.TokenLive(tok) {
		t.Error("token still live after recovery")
	}
	if n := len(pendingKeys(t, e, "cc-excl")); n != 0 {
		t.Errorf("%d queued revocations left after the retry", n)
	}
}

// pendingKeys lists a role's queued revocations.
func pendingKeys(t testing.TB, e *testEnv, role string) []string {
	t.Helper()
	return queuedKeys(t, e.storage, role)
}
