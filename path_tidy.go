package instacart

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

func pathTidy(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "tidy$",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefixInstacart,
			OperationSuffix: "storage",
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback:     b.pathTidyWrite,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "tidy"},
			},
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathTidyRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "tidy-status"},
			},
		},
		HelpSynopsis: "Remove expired shared tokens and retired credentials now; read how the pass goes.",
		HelpDescription: `
A write starts now (or joins) the pass the engine runs by itself every hour:
removes from storage and memory the shared tokens that have expired (those of
deleted or redefined roles among them), moves tokens stored by v0.1.0 to
today's layout, and drops retired credentials past their retention. It
answers with the pass's counts; a pass that would outlast the request
answers with the counts so far and goes on in the background. Nothing is
revoked: expired tokens need no call, and a deleted role's tokens stay valid
for the leases that hold them.

A read reports the pass running, or else the last one: its counts, the role
and shard it is at, and where it resumed a pass cut short. A pass walks one
role's users shard by shard and remembers the last shard it finished, so the
next pass resumes there. It paces itself by how long storage takes over its
batches, slowing down while storage is busy; a read shows the pace it keeps
(paced_keys_per_second, absent at storage's own pace) and the latencies it
goes by.
`,
	}
}

func (b *backend) pathTidyWrite(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	if !b.WriteSafeReplicationState() {
		return nil, logical.ErrReadOnly
	}
	pass := b.startTidy(req.Storage)
	b.lastTidy.Store(b.now().UnixNano()) // the hourly pass counts from this one
	wait := time.NewTimer(tidyResponseWait(ctx))
	defer wait.Stop()
	var warnings []string
	select {
	case <-pass.done:
		if pass.err != nil {
			return nil, requestError("tidy", pass.err)
		}
	case <-wait.C:
		warnings = append(warnings, "tidy goes on in the background: these are the counts so far; the hourly pass or another call reports the rest")
	case <-ctx.Done():
		return nil, requestError("tidy", ctx.Err())
	}
	return &logical.Response{Warnings: warnings, Data: pass.status()}, nil
}

func (b *backend) pathTidyRead(_ context.Context, _ *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	p := b.tidyRuns.status()
	if p == nil {
		return &logical.Response{Data: map[string]any{"running": false}}, nil
	}
	return &logical.Response{Data: p.status()}, nil
}

// tidyResponseMargin is left between answering a tidy call that is still
// running and the request's deadline (Vault's is 90 s by default).
const tidyResponseMargin = 10 * time.Second

// tidyResponseWait is how long a tidy call waits for its pass to finish.
func tidyResponseWait(ctx context.Context) time.Duration {
	if deadline, ok := ctx.Deadline(); ok {
		return max(time.Until(deadline)-tidyResponseMargin, 0)
	}
	return time.Minute
}
