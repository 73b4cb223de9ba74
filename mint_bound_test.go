package instacart

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Two config snapshots with different max_concurrent_mints in use at once
// (requests that loaded the config before a write, and after) share the
// one pool, sized by the current config: taking turns, they never hold
// more slots than its bound. Each sizing a pool of its own, every turn
// replaced the pool and its slots came on top of the last pool's.
func TestMintSlotsFollowTheCurrentConfig(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_concurrent_mints": 1})
	old, err := e.b.getSnapshot(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_concurrent_mints": 2})
	cur, err := e.b.getSnapshot(context.Background(), e.storage)
	if err != nil || cur == old || cur.config.mintBound() != 2 {
		t.Fatalf("no new snapshot with a bound of 2 (err %v)", err)
	}

	// A done context takes a free slot but never waits for one.
	done, cancel := context.WithCancel(context.Background())
	cancel()
	held := 0
	for i := range 8 {
		snap := []*configSnapshot{old, cur}[i%2]
		release, err := e.b.acquireMintSlot(done, &mintRequest{roleName: "cc", snap: snap})
		if err == nil {
			held++
			defer release()
		}
	}
	if held != 2 {
		t.Errorf("requests holding the two snapshots in turn got %d mint slots at once; the current bound is 2", held)
	}
}

// A read that loaded the config before a rotation and waited an hour for a
// mint slot mints with the retired credentials after it: its token lives an
// hour past the retention counted from the rotation. The credentials are kept
// until it expires, so revoking its lease near the end of its life still
// reaches Connect; pruned on time, they were gone and it stayed live.
func TestRetiredCredentialsOutliveLateMints(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	move := movableClock(e)
	gate, url := newCountingGate(t, e.fake)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": url, "client_secret": testSecret, "verify": false, "max_concurrent_mints": 1})
	queued := make(chan struct{}, 1)
	e.b.hooks.mintQueued = func() { queued <- struct{}{} }

	first := goDo(e, context.Background(), logical.ReadOperation, "creds/cc-excl", nil)
	<-gate.arrived // holds the only mint slot
	late := goDo(e, context.Background(), logical.ReadOperation, "creds/cc-excl", nil)
	<-queued // holds the current credentials' snapshot, waiting for the slot
	e.b.hooks.mintQueued = nil

	const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
	e.fake.AddClient(newID, newSecret)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": newID, "client_secret": newSecret, "verify": false})
	move(time.Hour) // the late read waits an hour
	gate.release <- struct{}{}
	<-gate.arrived // the late read's mint, with the retired credentials
	gate.release <- struct{}{}
	if o := awaitOutcome(t, first, "the first read"); o.token() == "" {
		t.Fatalf("first read: %v %v", o.resp, o.err)
	}
	o := awaitOutcome(t, late, "the late read")
	tok := o.token()
	if tok == "" {
		t.Fatalf("late read: %v %v", o.resp, o.err)
	}

	move(23*time.Hour + 30*time.Minute) // past the rotation's retention, before the late token expires
	periodicPass(t, e)                  // prunes what has expired
	if err := revoke(e, o.resp.Secret); err != nil {
		t.Fatal(err)
	}
	if e.fake.TokenLive(tok) {
		t.Error("the late token's lease was revoked, but its credentials were gone: it is live at Connect")
	}
}
