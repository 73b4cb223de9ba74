package instacart

import (
	"context"
	"sync"
	"time"
)

// background runs the mount's work outside any request, until the mount is
// cleaned up: a tidy pass (tidy_pass.go), and every mint or revocation that
// outlives the request that started it (a shared flight, a detached
// exclusive mint, its clean-up).
// Clean-up cancels it all and waits, so the mount ends with nothing running.
type background struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	stopMu  sync.Mutex // orders starting work against stopping
	stopped bool
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
