package instacart

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// A deleted role's tokens, tokens minted for an earlier definition of a
// role and tokens replaced while still valid all stay reachable by a flush.
func TestFlushReachesDeletedEditedAndSupersededTokens(t *testing.T) {
	t.Run("role deleted", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		role := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		u1 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}).Data["access_token"].(string)
		u2 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-2"}).Data["access_token"].(string)
		e.mustOK(logical.DeleteOperation, "roles/cc", nil)
		e.mustOK(logical.DeleteOperation, "roles/shoppers", nil)
		if l := liveTokens(e.fake, role, u1, u2); len(l) != 3 {
			t.Fatalf("a role delete revoked %d tokens; leases still hold them", 3-len(l))
		}
		e.mustOK(logical.DeleteOperation, "cache/cc", nil)
		e.mustOK(logical.DeleteOperation, "cache/shoppers", nil)
		if e.fake.TokenLive(role) {
			t.Error("the deleted role's shared token is live after a flush")
		}
		if l := liveTokens(e.fake, u1, u2); len(l) != 0 {
			t.Errorf("%d of the deleted role's per-user tokens are live after a flush", len(l))
		}
	})

	t.Run("role edited", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		old := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"scopes": "connect:fulfillment,connect:ian"})
		next := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		if next == old {
			t.Fatal("the token minted for the previous definition was served after the edit")
		}
		stored := storedAccessTokens(t, e.storage, roleTokenPrefix("cc"))
		if !slices.Contains(slices.Collect(maps.Values(stored)), old) {
			t.Errorf("the previous definition's token is no longer stored under %s (keys %v): no flush can reach it", roleTokenPrefix("cc"), slices.Sorted(maps.Keys(stored)))
		}
		e.mustOK(logical.DeleteOperation, "cache/cc", nil)
		if e.fake.TokenLive(old) {
			t.Error("the token minted for the previous definition is live after a flush")
		}
		if e.fake.TokenLive(next) {
			t.Error("the token minted for the new definition is live after a flush")
		}
	})

	t.Run("token replaced at refresh", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		advance := movableClock(e)
		first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		advance(23*time.Hour + 30*time.Minute)
		second := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		if second == first || !e.fake.TokenLive(first) {
			t.Fatalf("the refresh did not replace a still-valid token (replaced: %v)", second != first)
		}
		e.mustOK(logical.DeleteOperation, "cache/cc", nil)
		if e.fake.TokenLive(first) {
			t.Error("the token replaced at refresh is live after a flush")
		}
		if e.fake.TokenLive(second) {
			t.Error("the current token is live after a flush")
		}
	})
}
