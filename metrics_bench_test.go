package instacart

import (
	"context"
	"strconv"
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

// BenchmarkColdUserRead is the first read of a new user's token through the
// backend: a mint at the in-process fake, its storage, its lease. The
// plugin's share of a cold read's cost (Vault's gRPC and lease are not in it).
func BenchmarkColdUserRead(b *testing.B) {
	e := newTestEnv(b)
	e.configure()
	e.mustOK(logical.UpdateOperation, "roles/shoppers", map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": "*"})
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		req := &logical.Request{Operation: logical.UpdateOperation, Path: "creds/shoppers", Storage: e.storage, Data: map[string]any{"user_id": "user-" + strconv.Itoa(i)}}
		resp, err := e.b.HandleRequest(ctx, req)
		if err != nil || resp.IsError() {
			b.Fatal(err, resp)
		}
	}
}
