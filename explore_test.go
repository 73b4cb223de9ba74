//go:build explore

package instacart

// TestLifecycleExplorer is a deterministic, seeded schedule explorer. For
// each seed it builds a world (explore_world_test.go) in which every storage
// call and every Connect call of the backend parks at a scheduler
// (explore_sched_test.go), and drives it through a few dozen decisions: start
// an operation (creds reads of every kind, lease revoke and renew, cache
// flushes, config rotations, moves, deletes and re-creates, role edits,
// deletes and re-creates, tidy, the periodic function, a restart), release
// one parked call (a Connect call with a fault the seeded RNG picks: 503,
// 429 with or without Retry-After, a timeout after Connect handled the
// request, connection refused, invalid_client, an unparseable 200, an
// error_description quoting the user id, code or token the request carried,
// the caller leaving while Connect handles it; a storage call, any of Get,
// Put, Delete and List, failing at the seed's rate, a write sometimes
// landing all the same), or change the world (the clock moves, a host goes
// down or comes back, a client goes away, storage turns slow or refuses
// writes, a role's revocation queue is pre-filled with tens to thousands of
// entries). After every decision the invariants
// (explore_invariants_test.go) are checked:
//
//	I1 no token is handed out after it was taken out of service
//	I2 at quiescence, after a drain, no token is orphaned (live at Connect,
//	   not leased, not stored, not revoked); lost answers are counted apart;
//	   the revocation queue drains (each round of the drain makes progress)
//	I3 no authorization code reaches Connect twice
//	I4 each client secret reaches only the host and client id it was written for
//	I5 no creds read answers 500
//	I6 one role's load or failures do not make another's valid token
//	   unavailable, nor delay another host's revocations
//	I7 no operation of any other path (lease revoke and renew, cache flush,
//	   config, roles, tidy) answers an error without a status
//	I8 at quiescence, the pending-revocations gauge of every role equals the
//	   entries storage holds under revoking/<role>/ (at any depth; entries
//	   set aside under revoking/@aside/ do not count)
//	I9 a token Connect revoked is never handed out afterwards
//	LEAK no answer names a client secret; no error or warning quotes the
//	   user id or code its request carried, nor an access token; the logs
//	   name no secret, token or code
//
// Run (the explorer's files are behind the explore build tag, so that a plain
// go test ./... stays quick; make test-unit and make explore pass the tag):
//
//	go test -tags explore -race -run '^TestLifecycleExplorer$' .          the default seeds, in order, for at most ~45 s (at least 100)
//	EXPLORE_SEEDS=2000 go test -tags explore -race -run ... -timeout 0 .  more seeds (make explore SEEDS=2000)
//	EXPLORE_SEED=17 go test -tags explore -race -run ... -v .             replay one seed, with its trace
//	EXPLORE_STEPS=120                                                     decisions per seed
//
// A failing seed prints its failures (each class once per seed) and, for the
// first seed failing each class, the trace of decisions; replaying the seed
// repeats them (see explore_sched_test.go for what is and is not
// deterministic). A seed stops at its first failing step, but for failures
// of what an answer says (I5, I7, LEAK[echo]), which leave the world as it
// was: the seed goes on, so they do not hide what comes after. The test is
// expected to fail while the engine has the defects the invariants describe;
// nothing here is skipped to make it pass.
//
// Time. The clock is frozen between "advance" decisions. Storage calls cost
// no time but in slow phases, when each costs the phase's latency as it is
// released (a pass reading a long queue can spend its whole deadline
// reading); refused connections take none (they are released before the
// clock moves); a Connect attempt still parked when the config's
// request_timeout passes on the fake clock times out (handled or not, by
// the RNG); a 429's pause is a timer on the fake clock; a request is
// cancelled when its 90 s deadline passes, and storage then refuses its
// calls, as Vault's gRPC storage does; leases expire on the fake clock and
// Vault revokes them, retrying a failed revocation with its backoff and
// giving up after six failures (the lease is then irrevocable). The Vault
// API client resends a code write that answered 5xx, at most twice, within
// its 60 s timeout.
//
// Scenarios in the mix, beside single operations: a burst of first-time
// shoppers (per-user reads); a noisy neighbour (a burst, then a read of a
// quiet shared role whose token is due for refresh, behind it in the mint
// queue); a rotation or move while a shared read's mint is at Connect,
// followed by a read with the new credentials; a periodic pass with one
// host down and the other answering without faults; a flush, a periodic
// pass and a lease revocation of one role at once (the flush's drop of a
// stored token failing half of the time); a config write with verify=true
// whose caller leaves mid-request; a lease revocation while storage refuses
// writes, retried by Vault until it gives up. One seed in three is calm
// (few faults, no storage faults, no config or role churn).
//
// Where an invariant needed an interpretation, the check says so in its
// comment: what "expired" means for I2 (the engine's own count, from when
// the minting attempt was sent, and never the last second), which flushes
// bind I1 (a flush that answered an error binds the tokens it moved to the
// queue and that are no longer stored; across a restart, a generation is
// bound by what completed before it was created), which failures I5 and I7
// leave to Vault (a context error answered after the request was
// cancelled), which reads I6(a) does not judge (the client left; the role,
// the config or the backend generation changed meanwhile; Connect refused
// the credentials or the grant; a storage call failed meanwhile) and when
// I8 judges (once a periodic pass of the current generation that ended
// without error has recounted the queues since the last write the counts
// could not see: another generation's, a write storage reported failed
// though it landed, a pre-fill).

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

const (
	defaultExploreSeeds = 400
	defaultExploreSteps = 60
	// defaultExploreBudget bounds the default run (make test): seeds are
	// explored in order until all ran or this much wall time passed, so a
	// loaded machine runs fewer, never longer. EXPLORE_SEEDS runs them all.
	defaultExploreBudget = 45 * time.Second
	// minExploreSeeds always run, whatever the budget says.
	minExploreSeeds = 100
	// maxTraceLines bounds the trace printed per failing invariant class.
	maxTraceLines = 250
)

type seedResult struct {
	seed     uint64
	failures []failure
	trace    []string
	decided  int
	ops      int
	tokens   int
	lost     int
	stalls   int
	// staleOverwrites: shared tokens minted with older credentials stored
	// over newer ones.
	staleOverwrites int
	// periodic passes with a host down, and those I6(b) judged
	i6bPasses, i6bJudged int
	// quiescent moments at which I8 judged the pending gauge
	i8Judged int
	// tokens lost with their process (lostWithProcess)
	unsavedLost int
	dur         time.Duration
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

func TestLifecycleExplorer(t *testing.T) {
	steps := envInt(t, "EXPLORE_STEPS", defaultExploreSteps)
	var seeds []uint64
	replay := os.Getenv("EXPLORE_SEED") != ""
	if replay {
		for _, s := range strings.Split(os.Getenv("EXPLORE_SEED"), ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
			if err != nil {
				t.Fatalf("EXPLORE_SEED=%q: want a seed number (or a comma-separated list)", s)
			}
			seeds = append(seeds, n)
		}
	} else {
		for i := range envInt(t, "EXPLORE_SEEDS", defaultExploreSeeds) {
			seeds = append(seeds, uint64(i+1))
		}
	}

	start := time.Now()
	type byInvariant struct {
		seeds []uint64
		first seedResult
		msg   string
	}
	failing := map[string]*byInvariant{}
	var failedSeeds, stalls, ops, tokens, lost int
	var staleSeeds []uint64
	var i6bPasses, i6bJudged, i8Judged, unsavedLost int
	var slowest []seedResult // the slowest seeds, for keeping the run time sane
	budgeted := !replay && os.Getenv("EXPLORE_SEEDS") == ""
	ran := 0
	for i, seed := range seeds {
		if budgeted && i >= minExploreSeeds && time.Since(start) > defaultExploreBudget {
			break
		}
		ran++
		res := runExploreSeed(seed, steps)
		stalls += res.stalls
		ops += res.ops
		tokens += res.tokens
		lost += res.lost
		i6bPasses += res.i6bPasses
		i6bJudged += res.i6bJudged
		i8Judged += res.i8Judged
		unsavedLost += res.unsavedLost
		slowest = append(slowest, seedResult{seed: seed, dur: res.dur})
		sort.Slice(slowest, func(i, j int) bool { return slowest[i].dur > slowest[j].dur })
		slowest = slowest[:min(len(slowest), 3)]
		if res.staleOverwrites > 0 {
			staleSeeds = append(staleSeeds, seed)
		}
		if replay {
			t.Logf("seed %d: %d decisions, %d operations, %d tokens (%d lost in transit), %s\n%s",
				seed, res.decided, res.ops, res.tokens, res.lost, res.dur.Round(time.Millisecond), strings.Join(res.trace, "\n"))
		}
		if len(res.failures) == 0 {
			continue
		}
		failedSeeds++
		seen := map[string]bool{}
		for _, f := range res.failures {
			t.Errorf("seed %d, step %d: %s %s", seed, f.step, f.key(), f.msg)
			if seen[f.key()] {
				continue
			}
			seen[f.key()] = true
			b := failing[f.key()]
			if b == nil {
				b = &byInvariant{first: res, msg: f.msg}
				failing[f.key()] = b
			}
			b.seeds = append(b.seeds, seed)
		}
	}
	names := make([]string, 0, len(failing))
	for n := range failing {
		names = append(names, n)
	}
	sort.Strings(names)
	var summary strings.Builder
	fmt.Fprintf(&summary, "explored %d seeds × %d decisions in %s: %d operations, %d tokens minted (%d answers lost in transit), %d settle stalls; %d seeds failed",
		ran, steps, time.Since(start).Round(time.Millisecond), ops, tokens, lost, stalls, failedSeeds)
	fmt.Fprintf(&summary, "\n  I6(b) judged %d of %d periodic passes with a host down (the others had no revocation pending at the other host, or were cut short)", i6bJudged, i6bPasses)
	fmt.Fprintf(&summary, "\n  I8 judged the pending gauge at %d quiescent moments", i8Judged)
	fmt.Fprintf(&summary, "\n  %d tokens were lost with their process: only in its memory (a verify token of credentials storage refused to save, or a token storage refused to queue) when a restart cleaned it up before Connect took a revocation", unsavedLost)
	var slow []string
	for _, r := range slowest {
		slow = append(slow, fmt.Sprintf("%d (%s)", r.seed, r.dur.Round(time.Millisecond)))
	}
	fmt.Fprintf(&summary, "\n  slowest seeds: %s", strings.Join(slow, ", "))
	if len(staleSeeds) > 0 {
		fmt.Fprintf(&summary, "\n  a shared token minted with older credentials was stored over a newer one in seeds %v (I2 fails on it once the newer token's leases end early)", staleSeeds)
	}
	for _, n := range names {
		b := failing[n]
		list := b.seeds
		more := ""
		if len(list) > 12 {
			list, more = list[:12], fmt.Sprintf(" … (%d seeds)", len(b.seeds))
		}
		fmt.Fprintf(&summary, "\n  %s fails in seeds %v%s", n, list, more)
	}
	t.Log(summary.String())
	if !replay {
		for _, n := range names {
			b := failing[n]
			trace, cut := b.first.trace, ""
			if len(trace) > maxTraceLines {
				cut = fmt.Sprintf("(the first %d lines are left out; the replay prints them all)\n", len(trace)-maxTraceLines)
				trace = trace[len(trace)-maxTraceLines:]
			}
			t.Errorf("%s first failed in seed %d (replay: EXPLORE_SEED=%d go test -tags explore -race -run '^TestLifecycleExplorer$' -v .): %s\ntrace of seed %d:\n%s%s",
				n, b.first.seed, b.first.seed, b.msg, b.first.seed, cut, strings.Join(trace, "\n"))
		}
	}
}

// runExploreSeed builds a world for seed and runs it.
func runExploreSeed(seed uint64, steps int) seedResult {
	start := time.Now()
	w := newWorld(seed, steps)
	res := seedResult{seed: seed}
	w.run(&res)
	res.trace = w.trace
	res.ops = len(w.ops)
	res.stalls = w.sched.stalls
	w.inv.mu.Lock()
	res.tokens = len(w.inv.order)
	res.lost = w.inv.lostFaults
	res.staleOverwrites = w.inv.staleOverwrites
	res.i6bPasses, res.i6bJudged, res.i8Judged = w.inv.i6bPasses, w.inv.i6bJudged, w.inv.i8Judged
	res.unsavedLost = w.inv.unsavedLost
	w.inv.mu.Unlock()
	res.dur = time.Since(start)
	return res
}

// collect moves the invariants' failures into res, one per class per seed
// (a class failing again in the seed is not repeated); true when there is
// one that stops the seed (all but the soft ones: an answer's words or
// status).
func (w *world) collect(res *seedResult) bool {
	stop := false
	for _, f := range w.inv.takeFailures() {
		stop = stop || !f.soft
		dup := false
		for _, g := range res.failures {
			dup = dup || g.key() == f.key()
		}
		if dup {
			continue
		}
		res.failures = append(res.failures, f)
		w.logf("FAIL %s %s", f.key(), f.msg)
	}
	return stop
}

func (w *world) setStep(n int) {
	w.step = n
	w.stepNow.Store(int64(n))
}

// run drives the world: set-up, the decisions, wind-down to quiescence, the
// drain and I2. It stops at the first failing step.
func (w *world) run(res *seedResult) {
	defer w.teardown(res)
	w.setup()
	if w.calm {
		w.logf("seed %d: calm (fault rate 0.03, no config or role churn, hosts rarely down), max_concurrent_mints %d", w.seed, w.mintSlots)
	} else {
		w.logf("seed %d: fault rate %.2f, max_concurrent_mints %d", w.seed, w.faultRate, w.mintSlots)
	}
	for n := 1; n <= w.steps; n++ {
		w.setStep(w.step + 1)
		w.sched.settle()
		w.processCompletions()
		if w.collect(res) {
			return
		}
		res.decided++
		if dbg := os.Getenv("EXPLORE_DUMP_AT"); dbg == strconv.Itoa(w.step) {
			w.logf("goroutines: %s", blockedGoroutines())
		}
		if len(w.inflight) == 0 && w.sched.parkedCount() == 0 {
			w.inv.checkI8() // quiescent: the gauge says what the queue holds
			if w.collect(res) {
				return
			}
		}
		if len(w.inflight) == 0 && w.sched.parkedCount() == 0 && n > 1 && w.rng.IntN(6) == 0 {
			w.drainAndCheck()
			if w.collect(res) {
				return
			}
			continue
		}
		w.act()
	}
	w.setStep(w.step + 1)
	w.logf("wind-down: no new operations; parked calls are released until nothing is in flight")
	w.windDown()
	if w.collect(res) {
		return
	}
	w.drainAndCheck()
	w.collect(res)
}

// setup configures host A and the roles, with nothing parking.
func (w *world) setup() {
	w.sched.setPassthrough(true)
	defer w.sched.setPassthrough(false)
	w.newBackend()
	h := w.hosts[0]
	secret := w.newSecret(h)
	h.addSecret(secret)
	w.inv.writeSecret(secret, h.name, h.clientID)
	o := &opRun{name: "setup", desc: "set-up", b: w.b, gen: w.gen, store: w.storage(w.gen)}
	o.ctx = withOp(t0ctx(), o)
	mustOK := func(op logical.Operation, path string, data map[string]any) {
		resp, err := w.request(o, op, path, data)
		if err != nil || resp.IsError() {
			panic(fmt.Sprintf("explore set-up: %s %s: %v %v", op, path, err, resp.Error()))
		}
	}
	mustOK(logical.UpdateOperation, "config", w.configData(h, secret, false))
	for _, r := range allRoles {
		mustOK(logical.UpdateOperation, "roles/"+r, roleDefinition(r))
	}
}

// windDown releases parked calls (in seeded order) until no operation is in
// flight and nothing is parked. Operations in flight with nothing parked
// are blocked on something no parked call will free: a liveness failure.
func (w *world) windDown() {
	for range 20000 {
		w.setStep(w.step + 1)
		w.sched.settle()
		w.processCompletions()
		if w.inv.hasFailures() {
			return
		}
		if parked := w.sched.parkedSorted(); len(parked) > 0 {
			w.releaseOne(parked)
			continue
		}
		if timers := w.sched.timers(); len(timers) > 0 {
			// Only waits on the clock are left: time passes to the first.
			w.logf("clock to %s (waits on the clock only)", timers[0].deadline.Sub(exploreEpoch).Truncate(time.Second))
			w.advanceTo(timers[0].deadline)
			continue
		}
		if len(w.inflight) == 0 {
			return
		}
		// Give a goroutine woken by a timer (a retry's backoff) a chance
		// to park, within a real-time bound.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) && w.sched.parkedCount() == 0 && !w.anyDone() {
			w.sched.settle()
		}
		if w.sched.parkedCount() > 0 || w.anyDone() {
			continue
		}
		var names []string
		for _, o := range w.inflight {
			names = append(names, opName(o))
		}
		w.inv.fail("LIVENESS[stuck]", "nothing is parked, yet %s never finish: %s", strings.Join(names, ", "), blockedGoroutines())
		return
	}
	w.inv.fail("LIVENESS[no quiescence]", "the world did not quiesce within 20000 releases")
}

// latestRetryAt is when the last queued token backing off is due again.
func (w *world) latestRetryAt() time.Time {
	var latest time.Time
	for _, k := range w.queueKeys() {
		if p, _ := getJSON[pendingRevocation](context.Background(), w.inner, k); p != nil && p.RetryAt.After(latest) {
			latest = p.RetryAt
		}
	}
	return latest
}

// latestTimer is when the last parked timer (a back-off) is due.
func (w *world) latestTimer() time.Time {
	var latest time.Time
	for _, pc := range w.sched.parkedSorted() {
		if pc.kind == "timer" && pc.deadline.After(latest) {
			latest = pc.deadline
		}
	}
	return latest
}

func (w *world) anyDone() bool {
	for _, o := range w.inflight {
		if o.done.Load() {
			return true
		}
	}
	return false
}

// blockedGoroutines is the part of a goroutine dump in this package's code.
func blockedGoroutines() string {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	var out []string
	for _, g := range strings.Split(string(buf[:n]), "\n\n") {
		if strings.Contains(g, "vault-plugin-secrets-instacart.(*backend)") && !strings.Contains(g, "explore_test.go") {
			out = append(out, g)
		}
	}
	return "\n" + strings.Join(out, "\n\n")
}

// drainAndCheck is what happens once Connect is healthy again: every host up,
// no faults (storage answers every call, slow or not); Vault revokes expired
// leases and retries failed revocations, and runs its rollback with
// immediate (the periodic function, then every WAL entry), round after
// round, until no revocation is pending, no WAL entry is left and Vault has
// nothing left to revoke. A long queue may take many rounds; a round that
// leaves every queued entry where it was (no progress though nothing fails)
// is a queue that never drains. Then I2, and I8 at this quiescence.
func (w *world) drainAndCheck() {
	w.logf("drain: every host up, no faults; Vault revokes and runs its rollback (immediate) until nothing is pending")
	w.drainMode = true
	defer func() { w.drainMode = false }()
	if w.storageSlow > 0 { // slowness is a fault too
		w.storageSlow = 0
		w.logf("storage is fast again")
	}
	for _, h := range w.hosts {
		w.setHostDown(h, false)
	}
	w.afterClockMove()
	const minRounds, maxRounds = 6, 200
	before := w.queueKeys()
	for round := 1; ; round++ {
		// Time passes as the rollback timer fires: a token that kept
		// failing is tried again once its own back-off ends.
		if retry := w.latestRetryAt(); retry.After(w.clock.now()) {
			w.logf("drain: time passes to %s, when the last token backing off is due", retry.Sub(exploreEpoch).Truncate(time.Second))
			w.advanceTo(retry)
		}
		// And background work waiting out a back-off (a token held only in
		// memory, tried again) gets its next turn.
		if due := w.latestTimer(); due.After(w.clock.now()) {
			w.logf("drain: time passes to %s, when the last background wait ends", due.Sub(exploreEpoch).Truncate(time.Second))
			w.advanceTo(due)
		}
		for len(w.vaultQ) > 0 {
			l := w.vaultQ[0]
			w.vaultQ = w.vaultQ[1:]
			w.startVaultRevoke(l)
		}
		pass := &opRun{kind: opRollbackImmediate, desc: "Vault's rollback (immediate)"}
		w.startRollback(pass, true)
		w.windDown()
		if w.inv.hasFailures() {
			return
		}
		after := w.queueKeys()
		if len(after) == 0 && len(w.rawKeys("wal/")) == 0 && len(w.vaultQ) == 0 {
			w.inv.checkI2()
			w.inv.checkI8()
			return
		}
		left := map[string]bool{}
		for _, k := range after {
			left[k] = true
		}
		progressed := false
		for _, k := range before {
			progressed = progressed || !left[k]
		}
		switch {
		case len(before) > 0 && !progressed && len(after) > 0:
			desc, undecodable := w.describeQueue(after)
			class, why := "I2[revocation queue never drains]", ""
			switch {
			case undecodable:
				class = "I2[revocation queue never drains: an entry cannot be decoded]"
			case pass.deadlineHit && w.storageSlow > 0:
				class = "I2[revocation queue never drains: the pass's deadline passed reading it]"
				why = fmt.Sprintf(" (storage takes %s a call; the pass's deadline passed)", w.storageSlow)
			}
			w.inv.fail(class, "a round of the drain (every host up, no faults) revoked nothing of the %d queued entries%s: %s; %d WAL entries left, %d lease revocations failing",
				len(after), why, desc, len(w.rawKeys("wal/")), len(w.vaultQ))
		case round >= maxRounds || (round >= minRounds && len(after) == 0):
			desc, _ := w.describeQueue(after)
			w.inv.fail("I2[revocation queue never drains]", "after %d rounds with every host up and no faults, %d revocations are still pending (%s), %d WAL entries left and %d lease revocations failing",
				round, len(after), desc, len(w.rawKeys("wal/")), len(w.vaultQ))
		default:
			before = after
			continue
		}
		w.inv.checkI2()
		return
	}
}

// describeQueue says how many of keys each role's queue holds, and how
// many of them cannot be decoded (and whether any).
func (w *world) describeQueue(keys []string) (string, bool) {
	per := map[string]int{}
	bad := map[string]int{}
	for _, k := range keys {
		r := queueRole(k)
		per[r]++
		if _, err := getJSON[pendingRevocation](context.Background(), w.inner, k); err != nil {
			bad[r]++
		}
	}
	roles := make([]string, 0, len(per))
	for r := range per {
		roles = append(roles, r)
	}
	sort.Strings(roles)
	var parts []string
	for _, r := range roles {
		p := fmt.Sprintf("%s: %d", r, per[r])
		if bad[r] > 0 {
			p += fmt.Sprintf(" (%d cannot be decoded)", bad[r])
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", "), len(bad) > 0
}

// teardown releases everything, lets the goroutines end, and checks the
// logs for secrets.
func (w *world) teardown(res *seedResult) {
	w.sched.close()
	for _, o := range w.ops {
		o.cancel()
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && !w.allDone() {
		w.sched.settle()
	}
	for _, b := range w.backends {
		done := make(chan struct{})
		go func() {
			b.Cleanup(t0ctx())
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
	logs := w.logs.String()
	w.inv.checkLogLeaks(logs)
	w.inv.mu.Lock()
	for s := range w.inv.secretFor {
		if strings.Contains(logs, s) {
			w.inv.failLocked("LEAK[logs]", "a client secret is in the backend's logs")
			break
		}
	}
	w.inv.mu.Unlock()
	w.collect(res)
	for _, h := range w.hosts {
		h.fake.Close()
	}
}

func t0ctx() context.Context { return context.Background() }

func (w *world) allDone() bool {
	for _, o := range w.ops {
		if !o.done.Load() {
			return false
		}
	}
	return true
}
