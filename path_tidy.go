package instacart

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// tidyInterval is how often the periodic function tidies on its own: a pass
// reads every stored shared token, so it runs hourly, not every minute.
const tidyInterval = time.Hour

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
		},
		HelpSynopsis: "Remove expired shared tokens and retired credentials now.",
		HelpDescription: `
Starts now (or joins) the pass the engine runs by itself every hour: removes
from storage and memory the shared tokens that have expired or whose role was
deleted or redefined, and drops retired credentials past their retention.
Returns how many of each it removed; a pass that would outlast the request
answers with the counts so far and goes on in the background. Nothing is revoked: expired tokens need no call, and
a deleted role's tokens stay valid for the leases that hold them.
`,
	}
}

// tidyReport is what a tidy pass removed.
type tidyReport struct {
	expiredTokens, orphanedTokens, retiredCredentials int
}

func (b *backend) pathTidyWrite(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	if !b.WriteSafeReplicationState() {
		return nil, logical.ErrReadOnly
	}
	pass := b.startTidy(req.Storage)
	wait := time.NewTimer(tidyResponseWait(ctx))
	defer wait.Stop()
	var warnings []string
	select {
	case <-pass.done:
		if pass.err != nil {
			return nil, pass.err
		}
	case <-wait.C:
		warnings = append(warnings, "tidy goes on in the background: these are the counts so far; the hourly pass or another call reports the rest")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	rep := pass.report()
	return &logical.Response{Warnings: warnings, Data: map[string]any{
		"expired_tokens_removed":      rep.expiredTokens,
		"orphaned_tokens_removed":     rep.orphanedTokens,
		"retired_credentials_removed": rep.retiredCredentials,
	}}, nil
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

// tidyPass is one tidy pass: its counts grow as it goes, and done closes
// when it ends (err then says how).
type tidyPass struct {
	done                       chan struct{}
	err                        error
	expired, orphaned, retired atomic.Int64
}

func (p *tidyPass) report() tidyReport {
	return tidyReport{int(p.expired.Load()), int(p.orphaned.Load()), int(p.retired.Load())}
}

// tidy removes stale shared tokens of every role, then retired credentials
// past their retention, counting into p.
func (b *backend) tidy(ctx context.Context, s logical.Storage, p *tidyPass) error {
	dirs, err := s.List(ctx, tokenStoragePrefix)
	if err != nil {
		return fmt.Errorf("listing cached tokens: %w", err)
	}
	for _, dir := range dirs {
		role := strings.TrimSuffix(dir, "/")
		keys, err := b.tokens.roleKeys(ctx, s, role)
		if err != nil {
			return err
		}
		expired, orphaned, err := b.removeStaleTokens(ctx, s, role, keys, true)
		p.expired.Add(int64(expired))
		p.orphaned.Add(int64(orphaned))
		if err != nil {
			return err
		}
	}
	b.tokens.forgetExpired(b.now())
	retired, err := b.pruneConfig(ctx, s)
	p.retired.Add(int64(retired))
	return err
}

// staleness says whether a stored token should go: only once it has
// expired, since until then the leases holding it may need it revoked (a
// flush). orphaned: its role (r, nil when deleted) no longer served it.
func staleness(t *issuedToken, r *role, now time.Time) (expired, orphaned bool) {
	switch {
	case t == nil || !t.expired(now):
		return false, false
	case r == nil || t.RoleHash != r.hash:
		return false, true
	}
	return true, false
}

// removeBatch is how many keys are checked and deleted per hold of the role
// lock: short enough that a cold read of another role waits little.
const removeBatch = 32

// removeStaleTokens deletes, among a role's stored token keys, the stale
// ones. With precheck (tidy, where most tokens are fresh) each key is read
// without a lock first to skip fresh ones. Candidates are checked again and
// deleted under the role lock, which publishShared also takes, so a token
// stored meanwhile for the role's current definition is never dropped; the
// lock is held for one small batch at a time.
func (b *backend) removeStaleTokens(ctx context.Context, s logical.Storage, role string, keys []string, precheck bool) (expired, orphaned int, err error) {
	batch := make([]string, 0, removeBatch)
	flush := func() error {
		e, o, err := b.removeIfStale(ctx, s, role, batch)
		expired, orphaned, batch = expired+e, orphaned+o, batch[:0]
		return err
	}
	// The role as it was when the pass began; the locked check uses it as it is now.
	current, err := b.getRole(ctx, s, role)
	if err != nil {
		return 0, 0, err
	}
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return expired, orphaned, err
		}
		if precheck {
			t, err := b.tokens.load(ctx, s, key)
			if err != nil {
				return expired, orphaned, err
			}
			if e, o := staleness(t, current, b.now()); !e && !o {
				continue
			}
		}
		if batch = append(batch, key); len(batch) == removeBatch {
			if err := flush(); err != nil {
				return expired, orphaned, err
			}
		}
	}
	return expired, orphaned, flush()
}

// removeIfStale deletes those of keys that are stale, under the role lock.
func (b *backend) removeIfStale(ctx context.Context, s logical.Storage, role string, keys []string) (expired, orphaned int, err error) {
	if len(keys) == 0 {
		return 0, 0, nil
	}
	mu := b.roleLock(role)
	mu.Lock()
	defer mu.Unlock()
	r, err := b.getRoleLocked(ctx, s, role)
	if err != nil {
		return 0, 0, err
	}
	now := b.now()
	for _, key := range keys {
		t, err := b.tokens.load(ctx, s, key)
		if err != nil {
			return expired, orphaned, err
		}
		e, o := staleness(t, r, now)
		if !e && !o {
			continue
		}
		b.tokens.forget(key)
		if err := s.Delete(ctx, key); err != nil {
			return expired, orphaned, storageError("deleting cached token", err)
		}
		if e {
			expired++
		} else {
			orphaned++
		}
	}
	return expired, orphaned, nil
}

// forgetRoleTokens is called after a role is deleted or redefined: its
// tokens leave memory at once. In storage they stay, out of service (their
// role no longer serves them), until they expire and tidy removes them, or a
// flush of the role revokes them: leases may still hold them.
func (b *backend) forgetRoleTokens(role string) {
	for _, k := range b.tokens.memoryKeys(roleTokenPrefix(role)) {
		b.tokens.forget(k)
	}
}
