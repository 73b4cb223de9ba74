package instacart

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// tidyCount names one of a pass's counts.
type tidyCount int

const (
	tidyChecked tidyCount = iota
	tidyExpired
	tidyOrphaned
	tidyMoved
	tidyRetired
	tidySkipped // entries that could not be decoded
	numTidyCounts
)

// tidyCountKeys are the counts' names in the tidy path's answer and in the
// log line that ends a pass, in that order.
var tidyCountKeys = [numTidyCounts]string{
	tidyChecked:  "tokens_checked",
	tidyExpired:  "expired_tokens_removed",
	tidyOrphaned: "orphaned_tokens_removed",
	tidyMoved:    "tokens_moved",
	tidyRetired:  "retired_credentials_removed",
	tidySkipped:  "corrupt_entries_skipped",
}

// tidyCounts is what a pass did so far, counted as it goes.
type tidyCounts [numTidyCounts]atomic.Int64

func (c *tidyCounts) add(k tidyCount, n int) { c[k].Add(int64(n)) }
func (c *tidyCounts) get(k tidyCount) int    { return int(c[k].Load()) }

// removed is the tokens the pass removed.
func (c *tidyCounts) removed() int { return c.get(tidyExpired) + c.get(tidyOrphaned) }

// written is the tokens the pass removed or moved: a write each.
func (c *tidyCounts) written() int { return c.removed() + c.get(tidyMoved) }

// changed reports whether the pass changed anything in storage.
func (c *tidyCounts) changed() bool {
	return c.written()+c.get(tidyRetired) > 0
}

// render calls f with each count's name and value; corrupt entries only
// when there were some.
func (c *tidyCounts) render(f func(key string, n int)) {
	for k := range numTidyCounts {
		if n := c.get(k); k != tidySkipped || n > 0 {
			f(tidyCountKeys[k], n)
		}
	}
}

// logArgs are the counts as a log line's key-value pairs.
func (c *tidyCounts) logArgs() []any {
	var args []any
	c.render(func(k string, n int) { args = append(args, k, n) })
	return args
}

// tidyPass is one tidy pass: its counts grow as it goes, and done closes
// when it ends (err then says how).
type tidyPass struct {
	done        chan struct{}
	err         error
	started     time.Time
	counts      tidyCounts
	resumedFrom atomic.Pointer[string] // "<role>/<unit>" the pass began after, if it resumed one
	position    atomic.Pointer[string] // the unit being tidied
	finished    atomic.Pointer[time.Time]
	pace        *tidyPacer
}

// status is what the tidy path says of p.
func (p *tidyPass) status() map[string]any {
	d := map[string]any{
		"running":    true,
		"started_at": p.started.Format(time.RFC3339Nano),
	}
	p.counts.render(func(k string, n int) { d[k] = n })
	if from := p.resumedFrom.Load(); from != nil {
		d["resumed_after"] = *from
	}
	if pos := p.position.Load(); pos != nil {
		d["position"] = *pos
	}
	if end := p.finished.Load(); end != nil {
		d["running"] = false
		d["finished_at"] = end.Format(time.RFC3339Nano)
		if p.err != nil {
			d["error"] = errorSummary(p.err)
		}
	} else {
		if kps := p.pace.keysPerSecond(); kps > 0 {
			d["paced_keys_per_second"] = kps // absent: at storage's own pace
		}
		if lat, base := p.pace.latencies(); lat > 0 {
			d["batch_latency"] = lat.Round(time.Microsecond).String()
			d["baseline_batch_latency"] = base.Round(time.Microsecond).String()
		}
	}
	return d
}

// tidyRuns is the mount's tidy state: one pass at a time, and the last.
type tidyRuns struct {
	mu      sync.Mutex
	running *tidyPass // nil when none
	last    *tidyPass // nil before the first
}

// status is the pass running, or else the last one (nil before any).
func (t *tidyRuns) status() *tidyPass {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.running != nil {
		return t.running
	}
	return t.last
}

// startTidy starts a tidy pass in the background, or returns the one
// already running: a pass over a million tokens outlasts both Vault's
// rollback deadline and a request's.
func (b *backend) startTidy(s logical.Storage) *tidyPass {
	b.tidyRuns.mu.Lock()
	defer b.tidyRuns.mu.Unlock()
	if p := b.tidyRuns.running; p != nil {
		return p
	}
	p := &tidyPass{done: make(chan struct{}), started: b.now(), pace: b.tidyPace}
	if !b.bg.start() {
		p.err = errShuttingDown
		close(p.done)
		return p
	}
	b.tidyRuns.running = p
	go func() {
		defer b.bg.wg.Done()
		p.err = b.tidy(b.bg.ctx, s, p)
		end := b.now()
		p.finished.Store(&end)
		b.tidyRuns.mu.Lock()
		b.tidyRuns.running, b.tidyRuns.last = nil, p
		b.tidyRuns.mu.Unlock()
		close(p.done)
		switch {
		case p.err != nil:
			b.Logger().Warn("tidy stopped; the next pass goes on", append(p.counts.logArgs(), "error", p.err)...)
		case p.counts.changed():
			b.Logger().Info("tidy", p.counts.logArgs()...)
		}
	}()
	return p
}
