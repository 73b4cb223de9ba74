package instacart

import (
	"context"
	"sync"

	"github.com/hashicorp/vault/sdk/logical"
)

// background runs the mount's long work outside any request and outside
// Vault's rollback deadline, until the mount is cleaned up: one tidy pass at
// a time, one removal of a role's many tokens per role. (Mints finished for
// readers who left run on their own bounded contexts, not here.)
type background struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	tidyMu   sync.Mutex // guards tidying
	tidying  *tidyPass  // the pass running, nil when none
	cleanups sync.Map   // role name -> struct{}: one removal per role
}

func newBackground() *background {
	ctx, cancel := context.WithCancel(context.Background())
	return &background{ctx: ctx, cancel: cancel}
}

// stopBackground cancels background work and waits for it to end.
func (b *backend) stopBackground() {
	b.bg.cancel()
	b.bg.wg.Wait()
}

// startTidy starts a tidy pass in the background, or returns the one
// already running: a pass over a million tokens outlasts both Vault's
// rollback deadline and a request's.
func (b *backend) startTidy(s logical.Storage) *tidyPass {
	b.bg.tidyMu.Lock()
	defer b.bg.tidyMu.Unlock()
	if p := b.bg.tidying; p != nil {
		return p
	}
	p := &tidyPass{done: make(chan struct{})}
	b.bg.tidying = p
	b.bg.wg.Add(1)
	go func() {
		defer b.bg.wg.Done()
		p.err = b.tidy(b.bg.ctx, s, p)
		b.bg.tidyMu.Lock()
		b.bg.tidying = nil
		b.bg.tidyMu.Unlock()
		close(p.done)
		rep := p.report()
		switch {
		case p.err != nil:
			b.Logger().Warn("tidy stopped; the next pass goes on", "removed", rep.expiredTokens+rep.orphanedTokens, "error", p.err)
		case rep != (tidyReport{}):
			b.Logger().Info("tidy", "expired_tokens_removed", rep.expiredTokens, "orphaned_tokens_removed", rep.orphanedTokens, "retired_credentials_removed", rep.retiredCredentials)
		}
	}()
	return p
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
