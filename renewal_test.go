package instacart

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// countStorage swaps e's storage for counting wrappers over it: reads
// (which it can fail) and writes.
func countStorage(e *testEnv) (*countingStorage, *writeCountingStorage) {
	reads := &countingStorage{Storage: e.storage}
	writes := &writeCountingStorage{Storage: reads}
	e.storage = writes
	return reads, writes
}

// mustRenew renews a lease and fails the test unless Vault would extend it.
func mustRenew(t *testing.T, e *testEnv, what string, secret *logical.Secret) *logical.Response {
	t.Helper()
	r, err := renew(e, secret, 0)
	if err != nil || r == nil || r.IsError() || r.Secret == nil || r.Secret.TTL <= 0 {
		t.Fatalf("%s: renewal refused: %v %v", what, r, err)
	}
	return r
}

// mustRefuseRenewal renews a lease and fails the test unless it is refused
// with a 400 telling the holder to read creds/<role> again.
func mustRefuseRenewal(t *testing.T, e *testEnv, what, role string, secret *logical.Secret) string {
	t.Helper()
	r, err := renew(e, secret, 0)
	if codedStatus(err) != http.StatusBadRequest {
		t.Fatalf("%s: renewal answered %v %v, want a 400 refusal", what, r, err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "read creds/"+role+" again") {
		t.Errorf("%s: refusal %q does not tell the holder to read creds/%s again", what, msg, role)
	}
	return msg
}

// A shared lease is renewed while its token is what its role serves: held
// in memory, and read from storage once memory no longer holds it, for
// role-wide, fixed-user and per-user tokens.
func TestRenewalOfServedTokenSucceeds(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	leases := map[string]*logical.Response{
		"cc":       e.mustOK(logical.ReadOperation, "creds/cc", nil),
		"shopper":  e.mustOK(logical.ReadOperation, "creds/shopper", nil),
		"shoppers": e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}),
	}
	for role, resp := range leases {
		if h := resp.Secret.InternalData["token_hash"]; h != tokenHash(resp.Data["access_token"].(string)) {
			t.Errorf("%s: the lease names its token by %v", role, h)
		}
		if strings.Contains(role, "shopper") && resp.Secret.InternalData["user_id"] == nil {
			t.Errorf("%s: the lease of a user's token carries no user_id", role)
		}
		mustRenew(t, e, role+" (memory)", resp.Secret)
	}
	e.b.tokens.clear() // memory lost (eviction, restart): storage answers
	for role, resp := range leases {
		mustRenew(t, e, role+" (storage)", resp.Secret)
	}
	// A role's ttl still caps each renewal.
	capped := e.mustOK(logical.ReadOperation, "creds/cc-capped", nil)
	if r := mustRenew(t, e, "cc-capped", capped.Secret); r.Secret.TTL != time.Hour {
		t.Errorf("renewal of a lease capped by ttl=1h: ttl %v", r.Secret.TTL)
	}
}

// Every way a shared token stops being what its role serves refuses the
// renewal of its leases, telling the holder to read creds again; the read
// then gets the token the role serves now, whose lease renews.
func TestRenewalRefusedOnceTokenIsNoLongerServed(t *testing.T) {
	const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
	for _, tc := range []struct {
		name, role string
		user       string // for shoppers
		change     func(e *testEnv)
		readAgain  bool // whether creds/<role> still answers after the change
	}{
		{name: "flushed and revoked", role: "cc", change: func(e *testEnv) {
			e.mustOK(logical.DeleteOperation, "cache/cc", nil)
		}, readAgain: true},
		{name: "flushed, queued for revocation (Connect down)", role: "cc", change: func(e *testEnv) {
			e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
			if _, err := e.do(logical.DeleteOperation, "cache/cc", nil); codedStatus(err) != http.StatusBadGateway {
				e.t.Fatalf("flush with Connect down: %v, want a 502", err)
			}
			if len(pendingKeys(e.t, e, "cc")) != 1 {
				e.t.Fatal("the flushed token is not in the revocation queue")
			}
		}, readAgain: true},
		{name: "a user's token flushed", role: "shoppers", user: "store-1", change: func(e *testEnv) {
			e.mustOK(logical.DeleteOperation, "cache/shoppers", nil)
		}, readAgain: true},
		{name: "superseded by a newer mint", role: "cc", change: func(e *testEnv) {
			e.advance(23*time.Hour + time.Minute) // within min_remaining_ttl (1h) of its end
			e.mustOK(logical.ReadOperation, "creds/cc", nil)
		}, readAgain: true},
		{name: "credentials rotated", role: "cc", change: func(e *testEnv) {
			e.fake.AddClient(newID, newSecret)
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": newID, "client_secret": newSecret})
		}, readAgain: true},
		{name: "role edited", role: "cc", change: func(e *testEnv) {
			e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"scopes": "connect:fulfillment,connect:ian"})
		}, readAgain: true},
		{name: "role made exclusive", role: "cc", change: func(e *testEnv) {
			e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"token_reuse": "exclusive"})
		}, readAgain: true},
		{name: "role deleted", role: "cc", change: func(e *testEnv) {
			e.mustOK(logical.DeleteOperation, "roles/cc", nil)
		}},
		{name: "config deleted", role: "cc", change: func(e *testEnv) {
			e.mustOK(logical.DeleteOperation, "config", nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			read := func() *logical.Response {
				if tc.user != "" {
					return e.mustOK(logical.UpdateOperation, "creds/"+tc.role, map[string]any{"user_id": tc.user})
				}
				return e.mustOK(logical.ReadOperation, "creds/"+tc.role, nil)
			}
			old := read()
			mustRenew(t, e, "before the change", old.Secret)
			tc.change(e)
			msg := mustRefuseRenewal(t, e, "after the change", tc.role, old.Secret)
			if strings.Contains(msg, old.Data["access_token"].(string)) || (tc.user != "" && strings.Contains(msg, tc.user)) {
				t.Errorf("the refusal names the token or the user: %q", msg)
			}
			e.b.tokens.clear() // storage says the same
			mustRefuseRenewal(t, e, "after the change, from storage", tc.role, old.Secret)
			if !tc.readAgain {
				return
			}
			now := read()
			if now.Data["access_token"] == old.Data["access_token"] {
				t.Fatal("the read after the change handed out the refused token")
			}
			mustRenew(t, e, "the token read again", now.Secret)
		})
	}
}

// An exclusive lease renews until its token is queued for revocation.
func TestRenewalRefusedForExclusiveTokenBeingRevoked(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	mustRenew(t, e, "exclusive", resp.Secret)
	// Vault revokes the lease while Connect is down: the token waits in the
	// queue, and a renewal racing the revocation must not extend it.
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	if err := revoke(e, resp.Secret); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if len(pendingKeys(t, e, "cc-excl")) != 1 {
		t.Fatal("the token is not in the revocation queue")
	}
	mustRefuseRenewal(t, e, "queued exclusive", "cc-excl", resp.Secret)
}

// Leases issued before shared leases named their token renew as before,
// whatever happened to the token.
func TestRenewalOfLeaseWithoutTokenHash(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	delete(resp.Secret.InternalData, "token_hash")
	e.mustOK(logical.DeleteOperation, "cache/cc", nil)
	mustRenew(t, e, "a lease from before token_hash", resp.Secret)
}

// Renewal writes nothing, and reads storage only when memory does not show
// the token served: a served token in memory costs no storage read of it.
func TestRenewalWritesNothing(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	reads, writes := countStorage(e)
	shared := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	user := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"})
	excl := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	userKey := tokenKey("shoppers", "store-1")
	noWrites := func(what string) {
		t.Helper()
		if w, d := writes.reset(); len(w)+len(d) != 0 {
			t.Errorf("%s wrote %q and deleted %q in storage", what, w, d)
		}
	}
	tokenReads := func() int { return reads.getsUnder(tokenStoragePrefix) + reads.getsUnder(userTokenStoragePrefix) }

	writes.reset()
	before := tokenReads()
	mustRenew(t, e, "shared, in memory", shared.Secret)
	mustRenew(t, e, "user, in memory", user.Secret)
	if n := tokenReads() - before; n != 0 {
		t.Errorf("renewing tokens memory holds read storage %d times", n)
	}
	noWrites("renewals of tokens in memory")

	e.b.tokens.forget(userKey)
	before = reads.getsUnder(userKey)
	mustRenew(t, e, "user, from storage", user.Secret)
	if n := reads.getsUnder(userKey) - before; n != 1 {
		t.Errorf("renewing a token memory does not hold read its key %d times, want 1", n)
	}
	mustRenew(t, e, "exclusive", excl.Secret)
	noWrites("renewals read from storage")

	e.mustOK(logical.UpdateOperation, "roles/shoppers", map[string]any{"scopes": "connect:recommendations"})
	e.mustOK(logical.DeleteOperation, "cache/cc", nil)
	writes.reset()
	mustRefuseRenewal(t, e, "user, role edited", "shoppers", user.Secret)
	mustRefuseRenewal(t, e, "shared, flushed", "cc", shared.Secret)
	noWrites("refused renewals")
}

// A storage failure while checking the lease's token is a 503 saying so,
// not an uncoded 500, and not a refusal (the lease may well be good).
func TestRenewalStorageFailureIs503(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	c, _ := countStorage(e)
	shared := e.mustOK(logical.ReadOperation, "creds/cc", nil)
	excl := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	for _, failing := range []string{tokenStoragePrefix, roleStoragePrefix, revokingStoragePrefix} {
		e.b.tokens.clear()
		e.b.roles.Clear()
		c.failGet = func(key string) error {
			if strings.HasPrefix(key, failing) {
				return errors.New("storage unavailable")
			}
			return nil
		}
		for name, s := range map[string]*logical.Secret{"shared": shared.Secret, "exclusive": excl.Secret} {
			e.b.roles.Clear()
			r, err := renew(e, s, 0)
			if name == "shared" && failing == revokingStoragePrefix || name == "exclusive" && failing == tokenStoragePrefix {
				if err != nil || r.IsError() {
					t.Errorf("%s with %s failing: %v %v, want it renewed", name, failing, r, err)
				}
				continue
			}
			if got := codedStatus(err); got != http.StatusServiceUnavailable || !strings.Contains(err.Error(), "renewal") {
				t.Errorf("%s with %s failing: %v %v, want a 503 about the renewal", name, failing, r, err)
			}
		}
	}
}
