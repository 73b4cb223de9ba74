package instacart

import (
	"context"
	"sync"

	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/sync/semaphore"
)

// background runs the mount's long work (tidy passes, removing a role's many
// tokens) outside any request and outside Vault's rollback deadline, one at
// a time per kind, until the mount is cleaned up.
type background struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	tidy     *semaphore.Weighted // one tidy pass at a time
	cleanups sync.Map            // role name -> struct{}: one removal per role
}

func newBackground() *background {
	ctx, cancel := context.WithCancel(context.Background())
	return &background{ctx: ctx, cancel: cancel, tidy: semaphore.NewWeighted(1)}
}

// stopBackground cancels background work and waits for it to end.
func (b *backend) stopBackground() {
	b.bg.cancel()
	b.bg.wg.Wait()
}

// startTidy starts a tidy pass in the background unless one is running.
func (b *backend) startTidy(s logical.Storage) bool {
	if !b.bg.tidy.TryAcquire(1) {
		return false
	}
	b.bg.wg.Add(1)
	go func() {
		defer b.bg.wg.Done()
		defer b.bg.tidy.Release(1)
		rep, err := b.tidy(b.bg.ctx, s)
		if err != nil {
			b.Logger().Warn("tidy stopped; the next pass goes on", "error", err)
			return
		}
		if rep != (tidyReport{}) {
			b.Logger().Info("tidy", "expired_tokens_removed", rep.expiredTokens, "orphaned_tokens_removed", rep.orphanedTokens, "retired_credentials_removed", rep.retiredCredentials)
		}
	}()
	return true
}

// tidyNow runs a tidy pass in the request, after any pass already running.
func (b *backend) tidyNow(ctx context.Context, s logical.Storage) (tidyReport, error) {
	if err := b.bg.tidy.Acquire(ctx, 1); err != nil {
		return tidyReport{}, err
	}
	defer b.bg.tidy.Release(1)
	return b.tidy(ctx, s)
}

// startRoleCleanup removes a role's stale tokens in the background, unless a
// removal for that role is running: that one checks each token against the
// role as it is when it gets there, and tidy removes anything either missed.
func (b *backend) startRoleCleanup(s logical.Storage, role string, keys []string) {
	if _, running := b.bg.cleanups.LoadOrStore(role, struct{}{}); running {
		return
	}
	b.bg.wg.Add(1)
	go func() {
		defer b.bg.wg.Done()
		defer b.bg.cleanups.Delete(role)
		expired, orphaned, err := b.removeStaleTokens(b.bg.ctx, s, role, keys, false)
		if err != nil {
			b.Logger().Warn("background removal of a role's tokens stopped; tidy removes the rest", "role", role, "removed", expired+orphaned, "error", err)
			return
		}
		b.Logger().Info("removed a role's stored tokens in the background", "role", role, "removed", expired+orphaned)
	}()
}
