package instacart

import (
	"context"
	"testing"

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
