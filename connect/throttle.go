package connect

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"
)

// defaultPause is how long a 429 without Retry-After holds requests back.
const defaultPause = time.Second

// Throttle holds back the token requests of every Client that shares it
// while Connect's token endpoint has asked them to slow down: a 429 from it
// pauses them all for its Retry-After (capped), not only the request that
// got it, so a stampede of first-time mints backs off together.
//
// Revocations neither wait on it nor set it: revoking ends a live token's
// exposure and must not queue behind a mint stampede, and a 429 from the
// revoke endpoint says nothing about the token endpoint's limit.
//
// The pause is measured on the clocks of the Clients that share it
// (Config.Now), so those should share a clock too. The zero value is ready
// to use.
type Throttle struct {
	until atomic.Int64 // unix nanoseconds on the clients' clock
}

// noteAnswer pauses the clients when resp, answered at now, is a 429.
func (t *Throttle) noteAnswer(resp *http.Response, now time.Time) {
	if t == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		return
	}
	wait, ok := retryAfter(resp, now)
	if !ok {
		wait = defaultPause
	}
	until := now.Add(min(wait, maxRetryAfter)).UnixNano()
	for {
		cur := t.until.Load()
		if until <= cur || t.until.CompareAndSwap(cur, until) {
			return
		}
	}
}

// wait sleeps (through sleep, Config.Sleep) until the pause is over by now,
// or returns sleep's error if ctx ends first.
func (t *Throttle) wait(ctx context.Context, now func() time.Time, sleep func(context.Context, time.Duration) error) error {
	if t == nil {
		return nil
	}
	d := time.Unix(0, t.until.Load()).Sub(now())
	if d <= 0 {
		return nil
	}
	return sleep(ctx, d)
}
