package instacart

import (
	"context"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// BenchmarkCachedCredsRead is a cached read of a shared token through the
// backend, with the mount's metrics on (as shipped) and off (b.metrics nil:
// no counting), to show what counting costs the hot path.
func BenchmarkCachedCredsRead(b *testing.B) {
	for _, on := range []bool{true, false} {
		name := "metrics=on"
		if !on {
			name = "metrics=off"
		}
		b.Run(name, func(b *testing.B) {
			e := newTestEnv(b)
			e.configure()
			e.mustOK(logical.UpdateOperation, "roles/shared", map[string]any{"grant_type": cc})
			e.mustOK(logical.ReadOperation, "creds/shared", nil)
			if !on {
				e.b.metrics = nil
			}
			req := &logical.Request{Operation: logical.ReadOperation, Path: "creds/shared", Storage: e.storage}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				resp, err := e.b.HandleRequest(ctx, req)
				if err != nil || resp.IsError() {
					b.Fatal(err, resp)
				}
			}
		})
	}
}
