package connect

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"
)

// defaultPause is how long a 429 without Retry-After holds requests back.
const defaultPause = time.Second

// Throttle holds back every request of the Clients that share it while
// Connect has asked them to slow down: a 429 pauses them all for its
// Retry-After (capped), not only the request that got it, so a stampede of
// first-time mints backs off together. The zero value is ready to use.
type Throttle struct {
	until atomic.Int64 // unix nanoseconds
}

// noteAnswer pauses the client when resp is a 429.
func (t *Throttle) noteAnswer(resp *http.Response) {
	if t == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		return
	}
	wait, ok := retryAfter(resp)
	if !ok {
		wait = defaultPause
	}
	until := time.Now().Add(min(wait, maxRetryAfter)).UnixNano()
	for {
		cur := t.until.Load()
		if until <= cur || t.until.CompareAndSwap(cur, until) {
			return
		}
	}
}

// wait blocks until the pause is over or ctx ends.
func (t *Throttle) wait(ctx context.Context) {
	if t == nil {
		return
	}
	d := time.Until(time.Unix(0, t.until.Load()))
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
}
