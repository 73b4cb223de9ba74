package instacart

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// background runs the mount's work outside any request, until the mount is
// cleaned up: one tidy pass at a time, and every mint or revocation that outlives the request that
// started it (a shared flight, a detached exclusive mint, its clean-up).
// Clean-up cancels it all and waits, so the mount ends with nothing running.
type background struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	stopMu  sync.Mutex // orders starting work against stopping
	stopped bool

	tidyMu   sync.Mutex // guards tidying and lastPass
	tidying  *tidyPass  // the pass running, nil when none
	lastPass *tidyPass  // the pass that ran last, nil before the first
}

// tidyStatus is the pass running, or else the last one (nil before any).
func (bg *background) tidyStatus() *tidyPass {
	bg.tidyMu.Lock()
	defer bg.tidyMu.Unlock()
	if bg.tidying != nil {
		return bg.tidying
	}
	return bg.lastPass
}

func newBackground() *background {
	ctx, cancel := context.WithCancel(context.Background())
	return &background{ctx: ctx, cancel: cancel}
}

// stopBackground cancels background work and waits for it to end.
func (b *backend) stopBackground() {
	b.bg.stopMu.Lock()
	b.bg.stopped = true
	b.bg.cancel()
	b.bg.stopMu.Unlock()
	b.bg.wg.Wait()
}

// start counts one more piece of work unless the mount is stopping.
func (bg *background) start() bool {
	bg.stopMu.Lock()
	defer bg.stopMu.Unlock()
	if bg.stopped {
		return false
	}
	bg.wg.Add(1)
	return true
}

// goDetached runs f in the background on a context that ends after limit or
// when the mount is cleaned up, and reports whether it started (not once the
// mount is stopping).
func (bg *background) goDetached(limit time.Duration, f func(context.Context)) bool {
	if !bg.start() {
		return false
	}
	go func() {
		defer bg.wg.Done()
		ctx, cancel := context.WithTimeout(bg.ctx, limit)
		defer cancel()
		f(ctx)
	}()
	return true
}

// detached returns a context for work that outlives its request (bounded by
// limit, ended by the mount's clean-up), and done to call when it ends; ok
// is false once the mount is stopping.
func (bg *background) detached(limit time.Duration) (ctx context.Context, done func(), ok bool) {
	if !bg.start() {
		return nil, nil, false
	}
	ctx, cancel := context.WithTimeout(bg.ctx, limit)
	return ctx, func() { cancel(); bg.wg.Done() }, true
}

// outliveCaller returns a context that keeps ctx's values but not its end,
// for work a caller's leaving must not cut short (a mint whose token must be
// seen, the write that saves what revokes it). It ends after limit, or with
// the mount's clean-up once the caller has left too: while the caller waits
// it is a request like any other, which a clean-up does not cut short
// either (cut, it would leave that token with nothing to revoke it). cancel
// releases it.
func (b *backend) outliveCaller(ctx context.Context, limit time.Duration) (context.Context, context.CancelFunc) {
	detached, cancel := context.WithTimeout(context.WithoutCancel(ctx), limit)
	stopCaller := context.AfterFunc(ctx, func() {
		stopMount := context.AfterFunc(b.bg.ctx, cancel)
		<-detached.Done() // within limit
		stopMount()
	})
	return detached, func() { stopCaller(); cancel() }
}

// sleepCtx waits d, or until ctx ends and returns its error.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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
	p := &tidyPass{done: make(chan struct{}), started: b.now()}
	if !b.bg.start() {
		p.err = errShuttingDown
		close(p.done)
		return p
	}
	b.bg.tidying = p
	go func() {
		defer b.bg.wg.Done()
		p.err = b.tidy(b.bg.ctx, s, p)
		end := b.now()
		p.finished.Store(&end)
		b.bg.tidyMu.Lock()
		b.bg.tidying, b.bg.lastPass = nil, p
		b.bg.tidyMu.Unlock()
		close(p.done)
		rep := p.report()
		switch {
		case p.err != nil:
			b.Logger().Warn("tidy stopped; the next pass goes on", "removed", rep.expiredTokens+rep.orphanedTokens, "error", p.err)
		case rep.expiredTokens+rep.orphanedTokens+rep.movedTokens+rep.retiredCredentials > 0:
			b.Logger().Info("tidy", "tokens_checked", rep.checked, "expired_tokens_removed", rep.expiredTokens, "orphaned_tokens_removed", rep.orphanedTokens, "tokens_moved", rep.movedTokens, "retired_credentials_removed", rep.retiredCredentials)
		}
	}()
	return p
}
