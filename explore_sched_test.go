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
// seeded RNG chose (if any); closed when the run is over and nothing parks.
type verdict struct {
	fault  faultKind
	closed bool
}

// parkedCall is one storage or Connect call waiting for the scheduler.
type parkedCall struct {
	who   string // "op12", or "bg@g2" for the backend's own background work
	op    *opRun // nil for background work
	kind  string // "storage" or "connect"
	host  string // Connect calls: the host name ("A" or "B")
	label string // stable: who, kind and a detail with random parts masked
	// deadline is when a Connect attempt times out (request_timeout on the
	// fake clock); zero for storage calls.
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
	stalls int // settles that hit the real-time cap (diagnostics)

	stackBuf []byte
}

func newScheduler() *scheduler {
	return &scheduler{stackBuf: make([]byte, 1<<20)}
}

// park blocks the calling goroutine until the scheduler releases it.
func (s *scheduler) park(ctx context.Context, gen int, kind, host, detail string, deadline time.Time) verdict {
	o := opFrom(ctx)
	who := "bg@g" + itoa(gen)
	if o != nil {
		who = o.name
	}
	pc := &parkedCall{who: who, op: o, kind: kind, host: host, label: who + " " + kind + " " + detail, deadline: deadline, release: make(chan verdict, 1)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return verdict{closed: true}
	}
	if s.passthrough {
		s.mu.Unlock()
		return verdict{}
	}
	s.parked = append(s.parked, pc)
	s.mu.Unlock()
	s.events.Add(1)
	return <-pc.release
}

// parkedSorted returns the parked calls ordered by label (ties: arrival).
func (s *scheduler) parkedSorted() []*parkedCall {
	s.mu.Lock()
	out := append([]*parkedCall(nil), s.parked...)
	s.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].label < out[j].label })
	return out
}

func (s *scheduler) parkedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.parked)
}

// release lets one parked call go on with v.
func (s *scheduler) release(pc *parkedCall, v verdict) {
	s.mu.Lock()
	for i, p := range s.parked {
		if p == pc {
			s.parked = append(s.parked[:i], s.parked[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
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
// Like logical.InmemStorage (and unlike Vault's gRPC storage) it ignores a
// cancelled context.
type parkingStorage struct {
	w     *world
	gen   int
	inner *logical.InmemStorage
}

var _ logical.Storage = (*parkingStorage)(nil)

func (p *parkingStorage) park(ctx context.Context, what, key string) {
	p.w.sched.park(ctx, p.gen, "storage", "", what+" "+maskKey(key), time.Time{})
}

func (p *parkingStorage) List(ctx context.Context, prefix string) ([]string, error) {
	p.park(ctx, "list", prefix)
	return p.inner.List(ctx, prefix)
}

func (p *parkingStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	p.park(ctx, "get", key)
	return p.inner.Get(ctx, key)
}

func (p *parkingStorage) Put(ctx context.Context, entry *logical.StorageEntry) error {
	p.park(ctx, "put", entry.Key)
	p.w.inv.mu.Lock()
	defer p.w.inv.mu.Unlock()
	prev, _ := p.inner.Get(ctx, entry.Key)
	if err := p.inner.Put(ctx, entry); err != nil {
		return err
	}
	p.w.inv.observePutLocked(opFrom(ctx), entry.Key, prev, entry.Value)
	return nil
}

func (p *parkingStorage) Delete(ctx context.Context, key string) error {
	p.park(ctx, "delete", key)
	p.w.inv.mu.Lock()
	defer p.w.inv.mu.Unlock()
	prev, _ := p.inner.Get(ctx, key)
	if err := p.inner.Delete(ctx, key); err != nil {
		return err
	}
	p.w.inv.observeDeleteLocked(opFrom(ctx), key, prev)
	return nil
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
