package instacart

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// paceClock is a clock that moves only when told: a storage call's latency
// and the pacer's waits advance it, so no test sleeps.
type paceClock struct {
	mu     sync.Mutex
	t      time.Time
	waited time.Duration
}

func (c *paceClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *paceClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *paceClock) sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.waited += d
	c.mu.Unlock()
	return ctx.Err()
}

// batchView is what storage saw of one tidy batch.
type batchView struct {
	start time.Time // on the fake clock
	pace  int       // keys/s the pacer kept, 0 unpaced
	keys  int
}

// latencyStorage makes each token delete take latency(batch) on the fake
// clock, and records every batch tidy sent and the most deletes in flight.
type latencyStorage struct {
	logical.Storage
	clock   *paceClock
	pacer   *tidyPacer
	latency func(batch int) time.Duration

	mu       sync.Mutex
	deletes  int
	batches  []batchView
	inFlight int
	maxIn    int
}

func (l *latencyStorage) Delete(ctx context.Context, key string) error {
	if tokenRole(key) == "" {
		return l.Storage.Delete(ctx, key)
	}
	l.mu.Lock()
	batch := l.deletes / tidyBatch // tidy sends a shard's keys tidyBatch at a time
	if l.deletes%tidyBatch == 0 {
		l.batches = append(l.batches, batchView{start: l.clock.now(), pace: l.pacer.keysPerSecond()})
	}
	l.batches[batch].keys++
	l.deletes++
	l.inFlight++
	l.maxIn = max(l.maxIn, l.inFlight)
	l.mu.Unlock()
	l.clock.advance(l.latency(batch))
	err := l.Storage.Delete(ctx, key)
	l.mu.Lock()
	l.inFlight--
	l.mu.Unlock()
	return err
}

// storeOneShard stores n expired-soon tokens of role whose users all hash to
// one shard, so tidy sends them in full batches.
func storeOneShard(t *testing.T, e *testEnv, role string, n int) {
	t.Helper()
	r, err := e.b.getRole(context.Background(), e.storage, role)
	if err != nil || r == nil {
		t.Fatalf("role %s: %v", role, err)
	}
	exp := e.b.now().Add(time.Hour)
	for i, stored := 0, 0; stored < n; i++ {
		user := fmt.Sprintf("store-%d", i)
		if userHash(user)[:shardDigits] != "00" {
			continue
		}
		tok := &issuedToken{revocable: revocable{AccessToken: "placeholder-" + user, ExpiresAt: exp}, UserID: user, RoleHash: r.hash}
		if err := putJSON(context.Background(), e.storage, tokenKey(role, user), tok); err != nil {
			t.Fatal(err)
		}
		stored++
	}
}

// pacedPass runs one tidy pass over batches full batches of expired tokens,
// each token delete taking latency(batch) on a fake clock, after passes
// that stored batch 0's latency as the baseline: a minute mostly busy has
// a busy median, and the baseline of earlier minutes is what shows it.
func pacedPass(t *testing.T, batches int, latency func(batch int) time.Duration) (*latencyStorage, *paceClock) {
	t.Helper()
	e := newTestEnv(t)
	setupRoles(e)
	storeOneShard(t, e, "shoppers", batches*tidyBatch)
	earlier := storedPace{Baseline: tidyBatch * latency(0), BatchKeys: tidyBatch, Of: tidyBaselineOf}
	if err := putJSON(context.Background(), e.storage, tidyPacePath, earlier); err != nil {
		t.Fatal(err)
	}
	clock := &paceClock{t: time.Unix(1_800_000_000, 0)}
	e.b.tidyPace = newTidyPacer(clock.now, clock.sleep)
	ls := &latencyStorage{Storage: e.storage, clock: clock, pacer: e.b.tidyPace, latency: latency}
	e.storage = ls
	e.advance(2 * time.Hour)
	resp := e.mustOK(logical.UpdateOperation, "tidy", nil)
	if resp.Data["expired_tokens_removed"] != batches*tidyBatch {
		t.Fatalf("tidy = %v, want all %d removed", resp.Data, batches*tidyBatch)
	}
	if len(ls.batches) != batches {
		t.Fatalf("%d batches, want %d", len(ls.batches), batches)
	}
	assertBatchBounds(t, ls)
	return ls, clock
}

// assertBatchBounds: no batch is larger than tidyBatch, none starts before
// the pace of the one before let it, and no pace is under tidyMinPace.
func assertBatchBounds(t *testing.T, ls *latencyStorage) {
	t.Helper()
	if ls.maxIn > tidyBatch {
		t.Errorf("%d deletes in flight at once, bound is %d", ls.maxIn, tidyBatch)
	}
	for i, b := range ls.batches {
		if b.keys > tidyBatch {
			t.Errorf("batch %d sent %d keys, bound is %d", i, b.keys, tidyBatch)
		}
		if b.pace != 0 && b.pace < tidyMinPace {
			t.Errorf("batch %d paced at %d keys/s, under the minimum %d", i, b.pace, tidyMinPace)
		}
		if i == 0 || ls.batches[i-1].pace == 0 {
			continue
		}
		prev := ls.batches[i-1]
		// +1: the pace seen is truncated to whole keys a second.
		if gap, least := b.start.Sub(prev.start), time.Duration(float64(prev.keys)/float64(prev.pace+1)*float64(time.Second)); gap < least {
			t.Errorf("batch %d started %s after the one before, paced at %d keys/s: want at least %s", i, gap, prev.pace, least)
		}
	}
}

// Tidy runs at storage's own pace while its deletes are as fast as ever
// (an idle Vault), slows down as they slow (reads on any mount, a slow
// disk), to a floor it keeps, and speeds up again as they recover.
func TestTidyPaceFollowsDeleteLatency(t *testing.T) {
	const fast, slow = 250 * time.Microsecond, time.Millisecond // per delete, so per batch tidyBatch times as long
	latency := func(batch int) time.Duration {
		if batch >= 10 && batch < 30 {
			return slow
		}
		return fast
	}
	ls, _ := pacedPass(t, 80, latency)
	floor := int(tidyBusyShare * tidyBatch / (tidyBatch * slow).Seconds()) // tidyBusyShare of 1,000 keys/s
	paces := make([]int, len(ls.batches))
	for i, b := range ls.batches {
		paces[i] = b.pace
	}
	// From batch 10 deletes are slow: the median of the recent batches
	// shows it once most of them are, and tidy halves after that batch.
	firstPaced := 10 + tidyRecentBatches/2 + 1
	for i := range firstPaced {
		if paces[i] != 0 {
			t.Errorf("batch %d paced at %d keys/s while storage was as fast as ever, or slow for too short; want unpaced (all paces: %v)", i, paces[i], paces)
		}
	}
	for i := firstPaced; i <= 30; i++ {
		if paces[i] == 0 || i > firstPaced && paces[i] > paces[i-1] {
			t.Errorf("batch %d paced at %d after %d, while deletes were 4× slower; want slower or the same (all paces: %v)", i, paces[i], paces[i-1], paces)
		}
	}
	if paces[30] < floor-2 || paces[30] > floor+2 {
		t.Errorf("after 20 slow batches the pace is %d keys/s, want the floor %d (all paces: %v)", paces[30], floor, paces)
	}
	// Fast again from batch 30: the pace rises every batch until it no
	// longer holds batches back, then tidy is unpaced to the end.
	unpaced := slices.Index(paces[31:], 0) + 31
	if unpaced == 30 || unpaced > 50 {
		t.Fatalf("not unpaced by batch 50, 20 batches after deletes were fast again (all paces: %v)", paces)
	}
	for i := 32; i < unpaced; i++ {
		if paces[i] < paces[i-1] {
			t.Errorf("batch %d paced at %d after %d, with deletes fast again; want speeding up (all paces: %v)", i, paces[i], paces[i-1], paces)
		}
	}
	if rising := paces[unpaced-1] - paces[31]; rising <= 0 {
		t.Errorf("the pace did not rise between batch 31 and %d (all paces: %v)", unpaced-1, paces)
	}
	for i := unpaced; i < len(paces); i++ {
		if paces[i] != 0 {
			t.Errorf("batch %d paced at %d keys/s after tidy was unpaced again on fast storage (all paces: %v)", i, paces[i], paces)
		}
	}
}

// Storage that stays slow slows tidy to its floor, tidyBusyShare of the pace its
// batches go at, never to a stop: the pass ends, having waited no longer than the
// floor needs.
func TestTidyNeverStopsOnSlowStorage(t *testing.T) {
	latency := func(batch int) time.Duration {
		if batch == 0 {
			return 250 * time.Microsecond // as fast as when the baseline was stored
		}
		return time.Millisecond
	}
	const batches = 40
	ls, clock := pacedPass(t, batches, latency)
	floor := int(tidyBusyShare / time.Millisecond.Seconds()) // tidyBatch keys a tidyBatch ms
	if last := ls.batches[batches-1].pace; last < floor-2 || last > floor+2 {
		t.Errorf("pace at the last batch = %d keys/s, want the floor %d", last, floor)
	}
	if most := time.Duration(float64(batches*tidyBatch) / float64(floor) * float64(time.Second)); clock.waited == 0 || clock.waited > most {
		t.Errorf("tidy waited %s for %d keys; want some wait, and no more than the floor's %s", clock.waited, batches*tidyBatch, most)
	}
}

// The floor is bounded both ways: on storage in memory (microseconds a
// batch) by a quarter of the most tidy ever goes, on storage gone very slow
// by tidyMinPace.
func TestTidyFloorIsBounded(t *testing.T) {
	clock := &paceClock{t: time.Unix(1_800_000_000, 0)}
	p := newTidyPacer(clock.now, clock.sleep)
	if got := p.floor(); got != tidyMinPace {
		t.Errorf("floor before any batch = %v, want %d", got, tidyMinPace)
	}
	for range tidyMinuteLeast {
		p.observe(tidyBatch, tidyBatch, 100*time.Microsecond)
	}
	if got := p.floor(); got != tidyMaxPace/4 {
		t.Errorf("floor at a 100µs baseline = %v, want %d", got, tidyMaxPace/4)
	}
	for range tidyRecentBatches {
		p.observe(tidyBatch, tidyBatch, 10*time.Second)
	}
	if got := p.keysPerSecond(); got != tidyMinPace {
		t.Errorf("pace = %d on storage gone slow, want the floor %d", got, tidyMinPace)
	}
}

// A shard's short last batch is not timed: it would teach a baseline that
// full batches could never match.
func TestTidyPaceIgnoresShortBatches(t *testing.T) {
	clock := &paceClock{t: time.Unix(1_800_000_000, 0)}
	p := newTidyPacer(clock.now, clock.sleep)
	for range tidyMinuteLeast {
		p.observe(tidyBatch, tidyBatch, 10*time.Millisecond)
	}
	p.observe(tidySignalKeys-1, tidySignalKeys-1, 100*time.Microsecond)
	if p.baseline != 10*time.Millisecond {
		t.Errorf("baseline = %s after a short batch, want the full batch's 10ms", p.baseline)
	}
	p.observe(tidyBatch, tidyBatch, 15*time.Millisecond) // within tidyCongested of the baseline
	if got := p.keysPerSecond(); got != 0 {
		t.Errorf("pace = %d after a batch near the baseline, want unpaced", got)
	}
}

// The baseline is the least of the last tidyBaselineMinutes minutes'
// usual batches (each minute's median): storage that stays slower
// becomes the new normal, and tidy then goes back to full speed.
func TestTidyBaselineForgetsOldMinutes(t *testing.T) {
	clock := &paceClock{t: time.Unix(1_800_000_000, 0)}
	p := newTidyPacer(clock.now, clock.sleep)
	for range tidyMinuteLeast {
		p.observe(tidyBatch, tidyBatch, time.Millisecond)
	}
	for range 2 * tidyBaselineMinutes {
		clock.advance(time.Minute)
		for range tidyMinuteLeast {
			p.observe(tidyBatch, tidyBatch, 20*time.Millisecond)
		}
	}
	if p.baseline < 19*time.Millisecond {
		t.Errorf("baseline = %s after %d minutes at 20ms, want about 20ms", p.baseline, 2*tidyBaselineMinutes)
	}
	for range 400 {
		p.observe(tidyBatch, tidyBatch, 20*time.Millisecond)
	}
	if got := p.keysPerSecond(); got != 0 {
		t.Errorf("pace = %d keys/s at the new normal, want unpaced", got)
	}
}

// One slow batch among fast ones is noise, not load: the pace holds.
func TestTidyPaceShrugsOffOneSlowBatch(t *testing.T) {
	clock := &paceClock{t: time.Unix(1_800_000_000, 0)}
	p := newTidyPacer(clock.now, clock.sleep)
	for range tidyMinuteLeast {
		p.observe(tidyBatch, tidyBatch, 10*time.Millisecond)
	}
	p.observe(tidyBatch, tidyBatch, 40*time.Millisecond) // 4× the baseline
	if got := p.keysPerSecond(); got != 0 {
		t.Errorf("pace = %d keys/s after one slow batch, want unpaced", got)
	}
	for range 3 {
		p.observe(tidyBatch, tidyBatch, 40*time.Millisecond)
	}
	if got := p.keysPerSecond(); got == 0 {
		t.Error("still unpaced after four slow batches in a row")
	}
}

// The baseline outlives the process: after a restart, a pass that meets
// busy storage from its first batch slows down, where a pacer learning
// anew would take the busy latency for the norm and run unpaced.
func TestTidyBaselineSurvivesARestart(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	clock := &paceClock{t: time.Unix(1_800_000_000, 0)}
	const keys = (tidyMinuteLeast + 10) * tidyBatch // enough for a minute to count
	pass := func(latency time.Duration) *latencyStorage {
		t.Helper()
		storeOneShard(t, e, "shoppers", keys)
		e.b.tidyPace = newTidyPacer(clock.now, clock.sleep)
		ls := &latencyStorage{Storage: e.storage, clock: clock, pacer: e.b.tidyPace, latency: func(int) time.Duration { return latency }}
		saved := e.storage
		e.storage = ls
		defer func() { e.storage = saved }()
		e.advance(2 * time.Hour)
		if resp := e.mustOK(logical.UpdateOperation, "tidy", nil); resp.Data["expired_tokens_removed"] != keys {
			t.Fatalf("tidy = %v", resp.Data)
		}
		return ls
	}
	pass(250 * time.Microsecond) // idle

	e.b = reloadBackend(t, e)
	ls := pass(time.Millisecond) // busy from the first batch, 4× as slow
	paced := 0
	for _, b := range ls.batches {
		if b.pace > 0 {
			paced++
		}
	}
	if paced == 0 {
		t.Errorf("after a restart, no batch of a pass on busy storage was paced: the stored baseline was not used")
	}
	if sp, err := getJSON[storedPace](context.Background(), e.storage, tidyPacePath); err != nil || sp == nil || sp.Baseline != tidyBatch*250*time.Microsecond {
		t.Errorf("stored pace = %+v, %v; want the idle baseline (%s a batch) kept", sp, err, tidyBatch*250*time.Microsecond)
	}
}

// An idle raft server's batches jitter (10 to 18ms around a fastest of
// 9ms, measured on 2 cores) and an fsync stalls now and then: neither is
// load, and tidy stays unpaced through them.
func TestTidyStaysUnpacedThroughIdleJitter(t *testing.T) {
	clock := &paceClock{t: time.Unix(1_800_000_000, 0)}
	p := newTidyPacer(clock.now, clock.sleep)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 5000 {
		took := 10*time.Millisecond + time.Duration(rng.Int64N(int64(8*time.Millisecond)))
		switch {
		case i%97 == 0:
			took = 9 * time.Millisecond // the fastest, now and then
		case i%211 == 0:
			took = 80 * time.Millisecond // an fsync stall
		}
		clock.advance(took)
		p.observe(tidyBatch, tidyBatch, took)
		if got := p.keysPerSecond(); got != 0 {
			recent, base := p.latencies()
			t.Fatalf("batch %d (%s): paced at %d keys/s on idle storage (recent %s, baseline %s)", i, took, got, recent, base)
		}
	}
}

// A minute's figure counts once it has tidyMinuteLeast batches: before,
// its median would be a few lucky batches', and the line drawn from it
// would take every usual batch for load.
func TestTidyMinuteCountsOnceItHasEnoughBatches(t *testing.T) {
	clock := &paceClock{t: time.Unix(1_800_000_000, 0)}
	p := newTidyPacer(clock.now, clock.sleep)
	lucky := tidyMinuteLeast * 3 / 10 // the minute's first batches, 3 in 10
	for i := range tidyMinuteLeast {
		if _, base := p.latencies(); base != 0 {
			t.Fatalf("after %d batches the baseline is %s, want none yet", i, base)
		}
		took := 10 * time.Millisecond
		if i < lucky {
			took = time.Millisecond
		}
		p.observe(tidyBatch, tidyBatch, took)
	}
	if _, base := p.latencies(); base != 10*time.Millisecond {
		t.Errorf("baseline = %s after %d batches, the first %d lucky; want the usual 10ms", base, tidyMinuteLeast, lucky)
	}
	if got := p.keysPerSecond(); got != 0 {
		t.Errorf("pace = %d keys/s on storage as fast as ever, want unpaced", got)
	}
}

// A baseline stored by a release with other batches (or none said), or of
// another statistic, is learnt anew: 64-key batches' latency, or a minute's
// fastest tenth, would make every usual 128-key batch look like load.
func TestTidyBaselineOfOtherBatchesIsIgnored(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	for _, stored := range []string{`{"baseline_ns":9000000}`, `{"baseline_ns":9000000,"batch_keys":64,"of":"minute_median"}`, `{"baseline_ns":9000000,"batch_keys":128}`} {
		if err := e.storage.Put(ctx, &logical.StorageEntry{Key: tidyPacePath, Value: []byte(stored)}); err != nil {
			t.Fatal(err)
		}
		p := newTidyPacer(time.Now, sleepCtx)
		if err := p.load(ctx, e.storage); err != nil {
			t.Fatal(err)
		}
		if _, base := p.latencies(); base != 0 {
			t.Errorf("stored %s: baseline %s, want it learnt anew", stored, base)
		}
	}
}

// A pass that removes nothing (every token still valid: a read each, no
// write) teaches the pacer nothing: such batches are far faster than any
// that deletes, and a baseline from them would take every delete for load.
func TestTidyTimesOnlyBatchesThatWrite(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	storeOneShard(t, e, "shoppers", 4*tidyBatch) // valid for an hour
	clock := &paceClock{t: time.Unix(1_800_000_000, 0)}
	e.b.tidyPace = newTidyPacer(clock.now, clock.sleep)
	e.storage = &slowReads{Storage: e.storage, clock: clock}
	if resp := e.mustOK(logical.UpdateOperation, "tidy", nil); resp.Data["expired_tokens_removed"] != 0 {
		t.Fatalf("tidy = %v, want none removed", resp.Data)
	}
	if recent, base := e.b.tidyPace.latencies(); recent != 0 || base != 0 {
		t.Errorf("after a pass that removed nothing the pacer holds latency %s, baseline %s; want none", recent, base)
	}
}

// slowReads makes each read of a stored token take a millisecond on clock.
type slowReads struct {
	logical.Storage
	clock *paceClock
}

func (s *slowReads) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if tokenRole(key) != "" {
		s.clock.advance(time.Millisecond)
	}
	return s.Storage.Get(ctx, key)
}

// recordedBatch is one tidy batch of a pass on a real single-node raft
// server (2 cores), as testdata/tidy/*.txt holds them: keys sent, keys
// removed, and how long the batch took.
type recordedBatch struct {
	keys, wrote int
	took        time.Duration
}

func readRecordedBatches(t *testing.T, name string) []recordedBatch {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "tidy", name))
	if err != nil {
		t.Fatal(err)
	}
	var bs []recordedBatch
	for i, line := range strings.Split(string(raw), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var b recordedBatch
		var us int64
		if _, err := fmt.Sscan(line, &b.keys, &b.wrote, &us); err != nil {
			t.Fatalf("%s:%d: %v", name, i+1, err)
		}
		b.took = time.Duration(us) * time.Microsecond
		bs = append(bs, b)
	}
	return bs
}

// replay runs recorded batches through p on clock as tidyKeys would: wait
// for the pace, take the recorded time, observe. It returns the time the
// batches took, the time the pass took, and how many batches were paced.
func replay(t *testing.T, p *tidyPacer, clock *paceClock, bs []recordedBatch) (took, elapsed time.Duration, paced int) {
	t.Helper()
	start := clock.now()
	for _, b := range bs {
		if p.keysPerSecond() != 0 {
			paced++
		}
		if err := p.wait(context.Background(), b.keys); err != nil {
			t.Fatal(err)
		}
		clock.advance(b.took)
		took += b.took
		p.observe(b.keys, b.wrote, b.took)
	}
	return took, clock.now().Sub(start), paced
}

// Real idle passes, their batches spread widely (a median 1.4 times the
// fastest tenth) and slowed in pairs every second or so: tidy keeps to
// storage's own pace, wherever in a minute the pass starts. Then, two
// minutes later, the same server under steady reads on two mounts: most
// batches are paced. Recording 1 is of the pacer before 3bd0141, 2 of this
// one.
func TestTidyRecordedRaftPasses(t *testing.T) {
	for _, rec := range []string{"raft-1", "raft-2"} {
		idle := readRecordedBatches(t, rec+"-idle.txt")
		busy := readRecordedBatches(t, rec+"-busy.txt")
		for _, offset := range []time.Duration{0, 20 * time.Second, 40 * time.Second, 50 * time.Second, 57 * time.Second} {
			clock := &paceClock{t: time.Unix(1_800_000_000, 0).Add(offset)}
			p := newTidyPacer(clock.now, clock.sleep)
			took, elapsed, paced := replay(t, p, clock, idle)
			// In recording 1 this pacer took 1.02-1.07 times as long as the
			// batches, by where the pass started. Twice each minute's
			// fastest tenth (the pacer before) took 1.76 times; twice its
			// median, 1.11-1.36 times, the more as the first minute was
			// shorter (the pass's first batches were its fastest); 2.5
			// times its fastest tenth, 1.24-1.36 times.
			if most := took * 115 / 100; elapsed > most {
				t.Errorf("%s idle pass starting %s into a minute: %s of batches took %s paced (%d of %d batches paced); want at most %s", rec, offset, took.Round(time.Millisecond), elapsed.Round(time.Millisecond), paced, len(idle), most.Round(time.Millisecond))
			}
			clock.advance(2 * time.Minute)
			if _, _, paced = replay(t, p, clock, busy); paced < len(busy)*8/10 {
				recent, base := p.latencies()
				t.Errorf("%s busy pass after an idle one starting %s into a minute: %d of %d batches paced, want at least %d (recent %s, baseline %s)", rec, offset, paced, len(busy), len(busy)*8/10, recent, base)
			}
		}
	}
}
