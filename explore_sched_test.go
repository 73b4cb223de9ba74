//go:build explore

package instacart

// The schedule explorer's scheduler and parking storage (explore_test.go has
// the overview).
//
// Every storage call and every Connect call the backend makes parks here
// until the scheduler releases it, so the scheduler, not the Go runtime,
// decides the order in which those calls happen. Between two decisions the
// scheduler waits for the world to settle: every goroutine that can run has
// run until it parked again, finished, or blocked on something only another
// parked call can free (a mutex, a singleflight wait, a semaphore).
//
// A wait on the fake clock (a 429's pause) parks too, as a timer only the
// clock releases. A pass over a long revocation queue is released in bursts:
// the same goroutine's next read (or delete) of a queue entry follows the
// previous one without a decision in between (world.releaseStorage).
//
// What is deterministic: given a seed, the sequence of choices (which
// operation starts, which parked call is released, which fault it gets, when
// the clock moves) is a function of the seed and of what the world looked like
// at each decision. The world looks the same at each decision as long as
// settling is complete, which is detected, not proven (see settle). The
// engine's own randomness (WAL ids, credentials ids, incarnations) and the
// fake's (tokens, codes) never reach a label or a decision, and the clock is
// frozen between "advance" steps, so a replay of a seed makes the same
// choices. What is not guaranteed: two calls of one operation parked at once
// with the same label (which the engine never does today) are released in
// arrival order, and a goroutine that stays runnable past the settle cap
// (counted as a stall and reported) lets the schedule diverge.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// verdict is what a released call is told: for Connect calls, the fault the
// seeded RNG chose (if any); for storage calls, the error it fails with (if
// any); closed when the run is over and nothing parks.
type verdict struct {
	fault  faultKind
	closed bool
	// storageErr fails a storage call; landed: a write is applied all the
	// same (its answer was lost after the commit, as over gRPC).
	storageErr error
	landed     bool
	// leave is the caller leaving while Connect handles its request: the
	// transport calls it once Connect has handled the call.
	leave func()
}

// parkedCall is one storage or Connect call, or a wait on the fake clock,
// waiting for the scheduler.
type parkedCall struct {
	who   string // "op12", or "bg@g2" for the backend's own background work
	op    *opRun // nil for background work
	kind  string // "storage", "connect" or "timer"
	host  string // Connect calls: the host name ("A" or "B")
	what  string // storage calls: "get", "put", "delete", "list"
	key   string // storage calls: the key (or prefix), unmasked
	label string // stable: who, kind and a detail with random parts masked
	seq   uint64 // arrival order
	// deadline is when a Connect attempt times out (request_timeout on the
	// fake clock), or when a timer is due; zero for storage calls.
	deadline time.Time
	release  chan verdict
}

type scheduler struct {
	mu     sync.Mutex
	parked []*parkedCall
	// passthrough: set-up and tear-down, when calls do not park.
	passthrough bool
	closed      bool

	// events counts parks, releases, op starts and op ends: settle waits
	// until it stops moving.
	events atomic.Uint64
	stalls int    // settles that hit the real-time cap (diagnostics)
	seq    uint64 // guarded by mu: the last parkedCall.seq given

	stackBuf []byte
}

func newScheduler() *scheduler {
	return &scheduler{stackBuf: make([]byte, 1<<20)}
}

// park blocks the calling goroutine until the scheduler releases it; pc
// says what the call is (kind, host or storage op and key, deadline), detail
// what its label says beside who makes it.
func (s *scheduler) park(ctx context.Context, gen int, pc *parkedCall, detail string) verdict {
	if !s.enqueue(ctx, gen, pc, detail) {
		return verdict{closed: s.isClosed()}
	}
	return <-pc.release
}

// enqueue parks pc; false when calls do not park (set-up, tear-down).
func (s *scheduler) enqueue(ctx context.Context, gen int, pc *parkedCall, detail string) bool {
	o := opFrom(ctx)
	who := "bg@g" + itoa(gen)
	if o != nil {
		who = o.name
	}
	pc.who, pc.op, pc.label, pc.release = who, o, who+" "+pc.kind+" "+detail, make(chan verdict, 1)
	s.mu.Lock()
	if s.closed || s.passthrough {
		s.mu.Unlock()
		return false
	}
	s.seq++
	pc.seq = s.seq
	s.parked = append(s.parked, pc)
	s.mu.Unlock()
	s.events.Add(1)
	return true
}

func (s *scheduler) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// sleep is connect.Config.Sleep on the fake clock: a wait of d parks as a
// timer the scheduler fires once the clock has passed it (advanceTo), or
// ends with ctx. Backoffs of under a millisecond (the world's retry waits)
// cost nothing.
func (s *scheduler) sleep(ctx context.Context, gen int, now time.Time, d time.Duration) error {
	if d < time.Millisecond {
		return ctx.Err()
	}
	pc := &parkedCall{kind: "timer", deadline: now.Add(d)}
	if !s.enqueue(ctx, gen, pc, "sleep "+d.String()) {
		return ctx.Err()
	}
	select {
	case <-pc.release:
		return ctx.Err()
	case <-ctx.Done():
		if s.remove(pc) {
			s.events.Add(1)
		}
		return ctx.Err()
	}
}

// remove takes pc off the parked list; false if it was not there (released).
func (s *scheduler) remove(pc *parkedCall) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.parked {
		if p == pc {
			s.parked = append(s.parked[:i], s.parked[i+1:]...)
			return true
		}
	}
	return false
}

// parkedSorted returns the parked calls ordered by label (ties: arrival).
// Timers are left out: only the clock releases them.
func (s *scheduler) parkedSorted() []*parkedCall {
	s.mu.Lock()
	out := make([]*parkedCall, 0, len(s.parked))
	for _, pc := range s.parked {
		if pc.kind != "timer" {
			out = append(out, pc)
		}
	}
	s.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].label < out[j].label })
	return out
}

// timers returns the parked timers ordered by when they are due (ties: label).
func (s *scheduler) timers() []*parkedCall {
	s.mu.Lock()
	var out []*parkedCall
	for _, pc := range s.parked {
		if pc.kind == "timer" {
			out = append(out, pc)
		}
	}
	s.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].deadline.Equal(out[j].deadline) {
			return out[i].deadline.Before(out[j].deadline)
		}
		return out[i].label < out[j].label
	})
	return out
}

// nextPark waits for the goroutine just released from a storage call to
// park again at a call of the same kind (what) of who under prefix (a pass
// reading or dropping a long queue one entry after another), and returns
// it; nil when it did something else (parked elsewhere, blocked, ended).
// Only reads and deletes chain: what follows one in the engine's queue
// walks is the same goroutine's next call, never a goroutine it starts. The
// wait is short (the world was settled before the release, so that
// goroutine is the one that runs); if it runs out, a full settle decides,
// so the answer does not depend on the machine's speed. mark is the last
// seq given before the release, ev the event count after it.
func (s *scheduler) nextPark(who, what, prefix string, mark, ev uint64) *parkedCall {
	for range 20000 {
		if s.events.Load() != ev {
			if pc, n := s.newParks(who, what, prefix, mark); n == 1 {
				return pc
			}
			break
		}
		runtime.Gosched()
	}
	s.settle()
	if pc, n := s.newParks(who, what, prefix, mark); n == 1 {
		return pc
	}
	return nil
}

// newParks returns a call parked after mark by who, of kind what under
// prefix, and how many there are.
func (s *scheduler) newParks(who, what, prefix string, mark uint64) (*parkedCall, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var found *parkedCall
	n := 0
	for _, p := range s.parked {
		if p.seq > mark && p.who == who && p.kind == "storage" && p.what == what && strings.HasPrefix(p.key, prefix) {
			found = p
			n++
		}
	}
	return found, n
}

func (s *scheduler) lastSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

func (s *scheduler) parkedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.parked)
}

// release lets one parked call go on with v.
func (s *scheduler) release(pc *parkedCall, v verdict) {
	s.remove(pc)
	s.events.Add(1)
	pc.release <- v
}

// setPassthrough lets calls through without parking (set-up).
func (s *scheduler) setPassthrough(on bool) {
	s.mu.Lock()
	s.passthrough = on
	s.mu.Unlock()
}

// close ends the run: every parked call is released as refused, and calls
// that arrive later do not park.
func (s *scheduler) close() {
	s.mu.Lock()
	s.closed = true
	parked := s.parked
	s.parked = nil
	s.mu.Unlock()
	for _, pc := range parked {
		pc.release <- verdict{closed: true}
	}
}

// Settling. A goroutine released by the scheduler, an op just started, or a
// goroutine woken by a lock another one released, runs until it parks again,
// finishes or blocks. The scheduler cannot join goroutines the backend starts
// itself, so it detects the quiet state instead of waiting for it:
//   - no scheduler event (park, release, op start or end) for quietYields
//     calls of runtime.Gosched, then
//   - no goroutine of the world (the backend, its libraries, net/http) is
//     running or runnable in a full goroutine dump (blocked states such as
//     "chan receive", "select", "semacquire" or "sync.Mutex.Lock" count as
//     quiet), then
//   - another quiet period without any event (a timer that was due, such
//     as a retry's backoff of a nanosecond, has fired by then).
//
// A real-time cap bounds the wait; hitting it is counted as a stall (a
// goroutine spinning, or a timer the engine waits on in real time), never
// treated as an error by itself. No time.Sleep anywhere.
const (
	quietYields = 24
	settleCap   = 3 * time.Second
)

func (s *scheduler) settle() {
	start := time.Now()
	last := s.events.Load()
	quiet, idle, busy := 0, false, 0
	for {
		runtime.Gosched()
		if e := s.events.Load(); e != last {
			last, quiet, idle, busy = e, 0, false, 0
			continue
		}
		// Each dump stops the world: while others are busy, dump less and
		// less often, or a goroutine another thread must wake up to run
		// never gets to (seen on a VM with slow thread wake-ups: seconds
		// per seed instead of milliseconds).
		if quiet++; quiet >= quietYields<<min(busy, 8) {
			quiet = 0
			switch {
			case idle:
				// A whole quiet period after the dump found nothing
				// running: a timer that was due (a retry's backoff) has
				// had its chance to fire.
				return
			case !s.othersBusy():
				idle = true
			default:
				busy++
			}
		}
		if time.Since(start) > settleCap {
			s.stalls++
			return
		}
	}
}

// othersBusy reports whether any goroutine but the caller is running or
// runnable (or otherwise about to run without anyone's help).
func (s *scheduler) othersBusy() bool {
	var n int
	for {
		n = runtime.Stack(s.stackBuf, true)
		if n < len(s.stackBuf) {
			break
		}
		s.stackBuf = make([]byte, 2*len(s.stackBuf))
	}
	dump := s.stackBuf[:n]
	// The first goroutine in the dump is the caller. Each other one begins
	// "\n\ngoroutine N [state, …]:".
	// Only goroutines in the world's code count (the backend, its
	// libraries, the transport, net/http's): a profiler's or another
	// test's goroutine does not hold the world back.
	marker := []byte("\n\ngoroutine ")
	for {
		i := bytes.Index(dump, marker)
		if i < 0 {
			return false
		}
		dump = dump[i+len(marker):]
		open, end := bytes.IndexByte(dump, '['), bytes.IndexByte(dump, ']')
		if open < 0 || end < open {
			return false
		}
		state := dump[open+1 : end]
		if j := bytes.IndexByte(state, ','); j >= 0 {
			state = state[:j]
		}
		block := dump
		if k := bytes.Index(dump, marker); k >= 0 {
			block = dump[:k]
		}
		switch st := string(state); {
		case st == "running", st == "runnable", st == "syscall", st == "preempted",
			st == "copystack", strings.HasPrefix(st, "GC"):
			if worldGoroutine(block) {
				return true
			}
		}
	}
}

func worldGoroutine(stack []byte) bool {
	for _, p := range [][]byte{[]byte("vault-plugin-secrets-instacart"), []byte("hashicorp/"), []byte("golang.org/x/sync"), []byte("net/http")} {
		if bytes.Contains(stack, p) {
			return true
		}
	}
	return false
}

// parkingStorage parks every Get, Put, Delete and List at the scheduler
// before doing it on the shared in-memory storage, and tells the world what
// was written (token stories for the I2 report). Each backend generation has
// its own wrapper so its background work is labelled with its generation.
//
// Like Vault's gRPC storage, a call whose context has ended by the time it
// is released fails (with gRPC's words: a plain error whose text names the
// context error). The scheduler may fail any call (the verdict's
// storageErr), a write possibly after it landed; slowness is the scheduler
// moving the fake clock as it releases a call (world.releaseStorage).
type parkingStorage struct {
	w     *world
	gen   int
	inner *logical.InmemStorage
}

var _ logical.Storage = (*parkingStorage)(nil)

func (p *parkingStorage) park(ctx context.Context, what, key string) (verdict, error) {
	v := p.w.sched.park(ctx, p.gen, &parkedCall{kind: "storage", what: what, key: key}, what+" "+maskKey(key))
	if v.closed {
		return v, nil
	}
	if err := ctx.Err(); err != nil {
		return v, grpcContextError(err)
	}
	if v.storageErr != nil && !v.landed {
		return v, v.storageErr
	}
	return v, nil
}

// grpcContextError is what Vault's gRPC storage answers a plugin whose
// context ended: a status error, which reaches the plugin as a string.
func grpcContextError(err error) error {
	code := "Canceled"
	if errors.Is(err, context.DeadlineExceeded) {
		code = "DeadlineExceeded"
	}
	return fmt.Errorf("rpc error: code = %s desc = %s", code, err)
}

func (p *parkingStorage) List(ctx context.Context, prefix string) ([]string, error) {
	if _, err := p.park(ctx, "list", prefix); err != nil {
		return nil, err
	}
	return p.inner.List(ctx, prefix)
}

func (p *parkingStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if _, err := p.park(ctx, "get", key); err != nil {
		return nil, err
	}
	return p.inner.Get(ctx, key)
}

func (p *parkingStorage) Put(ctx context.Context, entry *logical.StorageEntry) error {
	v, err := p.park(ctx, "put", entry.Key)
	if err != nil {
		return err
	}
	p.w.inv.mu.Lock()
	defer p.w.inv.mu.Unlock()
	prev, _ := p.inner.Get(ctx, entry.Key)
	if err := p.inner.Put(ctx, entry); err != nil {
		return err
	}
	p.w.inv.observePutLocked(opFrom(ctx), p.gen, entry.Key, prev, entry.Value, v.landed)
	return v.storageErr // set only when the write landed all the same
}

func (p *parkingStorage) Delete(ctx context.Context, key string) error {
	v, err := p.park(ctx, "delete", key)
	if err != nil {
		return err
	}
	p.w.inv.mu.Lock()
	defer p.w.inv.mu.Unlock()
	prev, _ := p.inner.Get(ctx, key)
	if err := p.inner.Delete(ctx, key); err != nil {
		return err
	}
	p.w.inv.observeDeleteLocked(opFrom(ctx), p.gen, key, prev, v.landed)
	return v.storageErr // set only when the delete landed all the same
}

var (
	maskWAL     = regexp.MustCompile(`^wal/.*`)
	maskCode    = regexp.MustCompile(`^codes/.*`)
	maskPending = regexp.MustCompile(`^(revoking/[^/]+/).+`)
)

// maskKey hides the random parts of a storage key (WAL ids, code and token
// hashes) so labels, and so the order of parked calls, do not depend on them.
// Per-user token keys hash the user id, which is not random, and stay.
func maskKey(key string) string {
	switch {
	case maskWAL.MatchString(key):
		return "wal/*"
	case maskCode.MatchString(key):
		return "codes/*"
	}
	return maskPending.ReplaceAllString(key, "${1}*")
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
