package instacart

import (
	"context"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// A flush (or another node's delete plus Invalidate) that lands between a
// shared-token read from storage and its store into memory must win: the
// revoked token is never put back into memory.
func TestFlushDuringStorageReadIsNotUndone(t *testing.T) {
	for _, how := range []string{"flush", "invalidation"} {
		t.Run(how, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			old := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
			key := tokenKey("cc", "")
			inner := e.storage
			g := gateStorage(e)
			e.b.tokens.clear() // as after a restart: the next read loads from storage

			gt := g.park("get", key)
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = e.do(logical.ReadOperation, "creds/cc", nil)
			}()
			gt.awaitParked(t) // the token was read from storage, not yet remembered

			switch how {
			case "flush":
				e.mustOK(logical.DeleteOperation, "cache/cc", nil)
			case "invalidation":
				if err := inner.Delete(context.Background(), key); err != nil {
					t.Fatal(err)
				}
				e.b.invalidate(context.Background(), key)
			}
			close(gt.release)
			<-done

			if m := e.b.tokens.get(key); m != nil && m.AccessToken == old {
				t.Fatal("the flushed token was put back into memory")
			}
			next := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
			if next == old {
				t.Error("the flushed token is served again")
			}
		})
	}
}
