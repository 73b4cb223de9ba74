package instacart

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Tidy paces itself by its own batches' latency (AIMD, as TCP paces itself
// by round trips): when most of its recent batches take much longer than
// its usual ones of late, storage is busy (reads on any mount register
// leases in the same raft log, or the disk is slow), so the pace halves;
// otherwise it rises again, and once it is more than batches one after
// another achieve, tidy goes unpaced: an idle Vault gets full speed.
// Batches are sent together (tidyBatch), so a batch's latency is what
// storage makes its writes wait, whatever pace tidy keeps.
const (
	// tidyMinPace (keys/s) is the pace tidy never goes under, however busy
	// or slow storage is: a million expired tokens still go in under 3
	// hours.
	tidyMinPace = 100
	// tidyBusyShare is the share of storage's time tidy keeps while
	// storage is busy: at least this share of the pace its batches go at
	// now, one after another. Reads that never stop would otherwise hold it
	// at tidyMinPace, since their load, not tidy's, is what its latency
	// shows. On single-node raft with 2 cores and reads keeping the cores
	// busy, a quarter made about 400 keys/s and cost the reads an eighth;
	// half made 670-880 keys/s and cost them a sixth to a quarter
	// (docs/performance.md).
	tidyBusyShare = 1.0 / 4
	// tidyMaxPace (keys/s) is above what any storage measured tidies
	// (4,500/s on single-node raft, 2 cores): at it, tidy is not held back.
	tidyMaxPace = 20_000
	// tidyPaceStep is the least the pace rises after a batch that storage
	// served as fast as usual; it rises by tidyPaceGrowth when that is
	// more: from the floor back to unpaced in a second or two.
	tidyPaceStep   = 64
	tidyPaceGrowth = 1.25
	// tidyBackoff is what the pace is multiplied by when storage is busy.
	tidyBackoff = 0.5
	// tidyRecentBatches: the latency tidy goes by is the median of its
	// last few timed batches. An fsync that stalls slows one batch, or two
	// (an average would carry it for many more); load slows most of them.
	tidyRecentBatches = 5
	// tidyHoldBatches: after halving, the pace holds for as many batches,
	// which the recent latency needs to show the new pace.
	tidyHoldBatches = 4
	// tidyCongested: busy means the recent latency is over this many times
	// the baseline, and over the baseline by tidyLatencySlack at least: a
	// few milliseconds of scheduling noise on fast storage is not load. On
	// single-node raft (testdata/tidy) an idle pass's recent median crossed
	// 2.5 times the idle baseline for under 1% of its batches (twice it,
	// 3%: its batches slow as a pass goes on, and stall in pairs), and under
	// steady reads for 81-95% of them (3 times it, 59-79%).
	tidyCongested    = 2.5
	tidyLatencySlack = 2 * time.Millisecond
	// tidyBaselineMinutes is how many minutes of tidy work the baseline is
	// the least of; storage that stays slower for longer becomes the new
	// normal. A minute's figure is the median of its batches' latencies (of
	// its first tidyMinuteSamples), the same statistic as the recent
	// latency it is held against: an idle raft server's batches spread
	// widely (a median 1.4 times the fastest tenth, with pairs of stalls
	// every second or so), and a line drawn from its fast batches took
	// its usual ones for load.
	tidyBaselineMinutes = 30
	tidyMinuteSamples   = 1024
	// tidyMinuteLeast: a minute counts once it has timed this many batches
	// (3 seconds of idle raft, about 40 seconds of batches paced under reads):
	// before, its median would be a handful's, and the least of such is a
	// lucky one's. A pass starting late in a minute, and each hourly pass
	// after it, would draw the line lower.
	tidyMinuteLeast = 100
	// tidySignalKeys: only batches that wrote at least this many keys are
	// timed, since a batch's latency grows with its writes (a shard's last
	// keys are fewer, and a token still valid costs only a read).
	tidySignalKeys = tidyBatch / 2
)

// tidyPacePath keeps the baseline across restarts and failovers: a pass
// that starts while storage is busy still knows how fast it was idle,
// where a first timed batch would take the busy latency for the norm.
const tidyPacePath = "tidy/pace"

type storedPace struct {
	Baseline time.Duration `json:"baseline_ns"`
	// BatchKeys is the batch size it was learnt on: a baseline of smaller
	// batches would take every batch of today's for load.
	BatchKeys int `json:"batch_keys"`
	// Of names the statistic of a minute it is: a baseline of a minute's
	// faster batches (a development build stored their lowest tenth) would
	// also take usual batches for load.
	Of string `json:"of"`
}

// tidyBaselineOf names the statistic of a minute the baseline is (learn).
const tidyBaselineOf = "minute_median"

// tidyPacer keeps tidy's pace across passes, so a pass starting while
// storage is busy still knows how fast it is when idle.
type tidyPacer struct {
	now   func() time.Time
	sleep func(context.Context, time.Duration) error

	mu       sync.Mutex
	pace     float64         // keys/s; at tidyMaxPace, unpaced
	next     time.Time       // when the next batch may start
	recent   []time.Duration // the last tidyRecentBatches timed batches' latencies
	latency  time.Duration   // their median; 0 before any timed batch
	hold     int             // batches left before the pace may halve again
	minutes  []minuteLatency
	samples  []time.Duration // the newest minute's batch latencies, sorted
	baseline time.Duration   // least of the minutes'
}

// minuteLatency is one minute of tidy work's usual batch latency.
type minuteLatency struct {
	minute int64 // unix minutes
	took   time.Duration
}

func newTidyPacer(now func() time.Time, sleep func(context.Context, time.Duration) error) *tidyPacer {
	return &tidyPacer{now: now, sleep: sleep, pace: tidyMaxPace}
}

// wait holds a batch of n keys until the pace lets it start.
func (p *tidyPacer) wait(ctx context.Context, n int) error {
	p.mu.Lock()
	now := p.now()
	start := now
	if p.next.After(now) {
		start = p.next
	}
	p.next = start
	if p.pace < tidyMaxPace {
		p.next = start.Add(time.Duration(float64(n) / p.pace * float64(time.Second)))
	}
	p.mu.Unlock()
	if d := start.Sub(now); d > 0 {
		return p.sleep(ctx, d)
	}
	return ctx.Err()
}

// observe adjusts the pace to a batch of n keys, wrote of them removed or
// moved, that took took.
func (p *tidyPacer) observe(n, wrote int, took time.Duration) {
	if wrote < tidySignalKeys {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.recent) == tidyRecentBatches {
		p.recent = p.recent[1:]
	}
	p.recent = append(p.recent, took)
	p.latency = median(p.recent)
	base := p.learn(took)
	busy := base > 0 && float64(p.latency) > tidyCongested*float64(base) && p.latency-base > tidyLatencySlack
	// achieved is this batch's pace as if batches went one after another.
	achieved := float64(n) / max(took.Seconds(), 1e-9)
	switch {
	case p.hold > 0:
		p.hold--
	case busy:
		// From unpaced, halve what this batch achieved, not the cap.
		p.pace = max(min(p.pace, achieved)*tidyBackoff, p.floor())
		p.hold = tidyHoldBatches
	case p.pace < tidyMaxPace:
		p.pace = max(p.pace+tidyPaceStep, p.pace*tidyPaceGrowth)
		if p.pace >= achieved {
			p.pace = tidyMaxPace // the pace no longer holds batches back
		}
	}
}

func median(ds []time.Duration) time.Duration {
	sorted := slices.Sorted(slices.Values(ds))
	return sorted[len(sorted)/2]
}

// floor is the least pace while storage is busy: tidyBusyShare of the
// pace batches at the recent latency go, within tidyMinPace and a quarter
// of tidyMaxPace (storage in memory answers in microseconds).
func (p *tidyPacer) floor() float64 {
	if p.latency <= 0 {
		return tidyMinPace
	}
	now := float64(tidyBatch) / p.latency.Seconds()
	return min(max(tidyBusyShare*now, tidyMinPace), tidyMaxPace/4)
}

// learn records a batch's latency in its minute and returns the baseline.
func (p *tidyPacer) learn(took time.Duration) time.Duration {
	minute := p.now().Unix() / 60
	if k := len(p.minutes); k == 0 || p.minutes[k-1].minute != minute {
		p.minutes = append(p.minutes, minuteLatency{minute: minute})
		if len(p.minutes) > tidyBaselineMinutes {
			p.minutes = p.minutes[1:]
		}
		p.samples = p.samples[:0]
	}
	if len(p.samples) < tidyMinuteSamples {
		i, _ := slices.BinarySearch(p.samples, took)
		p.samples = slices.Insert(p.samples, i, took)
		if len(p.samples) >= tidyMinuteLeast {
			p.minutes[len(p.minutes)-1].took = p.samples[len(p.samples)/2]
		}
	}
	p.baseline = 0 // unknown until a minute counts
	for _, m := range p.minutes {
		if m.took > 0 && (p.baseline == 0 || m.took < p.baseline) {
			p.baseline = m.took
		}
	}
	return p.baseline
}

// load takes the stored baseline when this process has timed no batch
// yet; it counts as the oldest minute, so tidyBaselineMinutes of work
// replace it.
func (p *tidyPacer) load(ctx context.Context, s logical.Storage) error {
	p.mu.Lock()
	known := len(p.minutes) > 0
	p.mu.Unlock()
	if known {
		return nil
	}
	sp, err := getJSON[storedPace](ctx, s, tidyPacePath)
	if errors.Is(err, errCorrupt) {
		return nil // learnt anew, and stored over at the pass's end
	}
	if err != nil || sp == nil || sp.Baseline <= 0 || sp.BatchKeys != tidyBatch || sp.Of != tidyBaselineOf {
		return err // none, or learnt on other batches or otherwise: learnt anew
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.minutes) == 0 {
		p.minutes = []minuteLatency{{minute: 0, took: sp.Baseline}}
		p.baseline = sp.Baseline
	}
	return nil
}

// save stores the baseline, if a batch was timed.
func (p *tidyPacer) save(ctx context.Context, s logical.Storage) error {
	p.mu.Lock()
	base := p.baseline
	p.mu.Unlock()
	if base <= 0 {
		return nil
	}
	return putJSON(ctx, s, tidyPacePath, storedPace{Baseline: base, BatchKeys: tidyBatch, Of: tidyBaselineOf})
}

// keysPerSecond is the pace now, 0 when unpaced.
func (p *tidyPacer) keysPerSecond() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pace >= tidyMaxPace {
		return 0
	}
	return int(p.pace)
}

// latencies are the recent batch latency and the baseline it is held
// against (both 0 before a batch was timed).
func (p *tidyPacer) latencies() (recent, baseline time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.latency, p.baseline
}
