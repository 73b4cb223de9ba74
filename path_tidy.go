package instacart

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// tidyInterval is how often the periodic function tidies on its own: a pass
// reads every stored shared token, so it runs hourly, not every minute.
const tidyInterval = time.Hour

// syncCleanupLimit is how many stored tokens a role edit or delete removes
// within its request; beyond that the rest is removed in the background (and
// any tidy pass finishes what is left), so a role with a hundred thousand
// per-user tokens is deleted at once.
const syncCleanupLimit = 1000

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
		HelpSynopsis: "Remove expired and orphaned shared tokens and retired credentials now.",
		HelpDescription: `
Runs now the pass the engine runs by itself every hour: removes from storage
and memory the shared tokens that have expired or whose role was deleted or
redefined, and drops retired credentials past their retention. Returns how
many of each it removed. Nothing is revoked: expired tokens need no call, and
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
	rep, err := b.tidyNow(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]any{
		"expired_tokens_removed":      rep.expiredTokens,
		"orphaned_tokens_removed":     rep.orphanedTokens,
		"retired_credentials_removed": rep.retiredCredentials,
	}}, nil
}

// tidy removes stale shared tokens of every role, then retired credentials
// past their retention.
func (b *backend) tidy(ctx context.Context, s logical.Storage) (tidyReport, error) {
	var rep tidyReport
	dirs, err := s.List(ctx, tokenStoragePrefix)
	if err != nil {
		return rep, fmt.Errorf("listing cached tokens: %w", err)
	}
	for _, dir := range dirs {
		role := strings.TrimSuffix(dir, "/")
		keys, err := b.tokens.roleKeys(ctx, s, role)
		if err != nil {
			return rep, err
		}
		expired, orphaned, err := b.removeStaleTokens(ctx, s, role, keys, true)
		rep.expiredTokens += expired
		rep.orphanedTokens += orphaned
		if err != nil {
			return rep, err
		}
	}
	b.tokens.forgetExpired(b.now())
	rep.retiredCredentials, err = b.pruneConfig(ctx, s)
	return rep, err
}

// staleness says why a stored token should go: it has expired, or its role
// (r, nil when deleted) no longer serves it.
func staleness(t *issuedToken, r *role, now time.Time) (expired, orphaned bool) {
	switch {
	case t == nil:
		return false, false
	case !now.Before(t.ExpiresAt):
		return true, false
	case r == nil || t.RoleHash != r.hash:
		return false, true
	}
	return false, false
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

// dropStaleRoleTokens is called after a role is deleted or redefined: its
// tokens leave memory at once, and storage within the request when there
// are few, else in the background. It reports whether it went background.
func (b *backend) dropStaleRoleTokens(ctx context.Context, s logical.Storage, role string) (background bool, err error) {
	for _, k := range b.tokens.memoryKeys(roleTokenPrefix(role)) {
		b.tokens.forget(k)
	}
	keys, err := b.tokens.roleKeys(ctx, s, role)
	if err != nil {
		return false, err
	}
	if len(keys) <= syncCleanupLimit {
		_, _, err := b.removeStaleTokens(ctx, s, role, keys, false)
		return false, err
	}
	b.startRoleCleanup(s, role, keys)
	return true, nil
}
