package instacart

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// A pass over one role's queue (drainQueue): the walk lists a unit at a time,
// claims and reads each entry, settles at once what needs no call, and hands
// the rest to per-host workers (revokers) while it reads on.

// hostHealth remembers, for one pass, the consecutive transient failures of
// each host (credentials): a host down leaves its other tokens to the next
// pass, however many roles and tokens it minted.
type hostHealth struct {
	mu       sync.Mutex
	failures map[string]int // credentials id -> consecutive transient failures
}

func newHostHealth() *hostHealth { return &hostHealth{failures: map[string]int{}} }

func (h *hostHealth) down(credentialsID string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failures[credentialsID] >= hostDownAfter
}

func (h *hostHealth) record(credentialsID string, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ok {
		delete(h.failures, credentialsID)
	} else {
		h.failures[credentialsID]++
	}
}

// revocationTally is what one pass over a role's queue did: tokens revoked
// at Connect, dropped as expired without a call, refused by Connect, still
// waiting, set aside as undecodable, and (of the waiting) those storage could
// not read; the names describe the refused and waiting ones (at most
// namedInReport each); complete is false when the pass stopped before the
// end of the queue.
type revocationTally struct {
	revoked, expired, refused, pending, setAside, unreadable int
	refusedNames, pendingNames                               []string
	complete                                                 bool
}

func (t *revocationTally) wait(userID string) {
	t.pending++
	if len(t.pendingNames) < namedInReport {
		t.pendingNames = append(t.pendingNames, describeToken(userID))
	}
}

func (t *revocationTally) refuse(userID string) {
	t.refused++
	if len(t.refusedNames) < namedInReport {
		t.refusedNames = append(t.refusedNames, describeToken(userID))
	}
}

// passMode says how a pass treats the turn, the claims and each token's back-off.
type passMode int

const (
	passPeriodic passMode = iota // skips a busy role or entry; honours back-off
	passFlush                    // waits for the turn and for each entry; tries every token now
)

// drainQueue is one pass over role's queue, a unit at a time: it revokes as
// it goes, drops expired entries without a call, and sets undecodable ones
// aside. It stops at ctx's end, keeping what it did; a periodic pass goes on
// where the last stopped, and skips a role whose pass is already running.
// Each unit it lists is counted (queue_counts.go).
func (b *backend) drainQueue(ctx context.Context, s logical.Storage, role string, mode passMode, hosts *hostHealth) (revocationTally, error) {
	turn := b.claims.turn(role)
	got, err := turn.take(ctx, mode == passFlush)
	if !got {
		return revocationTally{}, err
	}
	defer turn.give()

	prefix := queuePrefix(role)
	before := b.queued.versions(role)
	legacyVersion := b.queued.version(role, "")
	top, err := s.List(ctx, prefix)
	if err != nil {
		return revocationTally{}, storageError("listing the revocation queue", err)
	}
	var legacy []string
	units := []tokenUnit{""}
	for _, k := range top {
		if shard, ok := strings.CutSuffix(k, "/"); ok {
			units = append(units, shard)
		} else {
			legacy = append(legacy, prefix+k)
		}
	}
	slices.Sort(units)
	b.queued.listedFolder(role, units, before)
	b.queued.listed(role, "", len(legacy), legacyVersion)

	start := 0
	if mode == passPeriodic {
		for start < len(units) && units[start] < turn.next {
			start++
		}
	}
	rv := b.newRevokers(ctx, s, role, mode, hosts)
	stopped := false
	turn.next = ""
	for _, unit := range units[start:] {
		keys := legacy
		if unit != "" {
			version := b.queued.version(role, unit)
			names, err := s.List(ctx, prefix+unit+"/")
			if err != nil {
				if ctx.Err() == nil {
					rv.fail(storageError("listing the revocation queue", err))
					continue
				}
			} else {
				b.queued.listed(role, unit, len(names), version)
			}
			keys = make([]string, len(names))
			for i, n := range names {
				keys[i] = prefix + unit + "/" + n
			}
		}
		rv.walk(keys)
		if ctx.Err() != nil {
			turn.next, stopped = unit, true // this unit again, next time
			break
		}
	}
	tally, err := rv.finish()
	tally.complete = !stopped && ctx.Err() == nil
	return tally, err
}

// queuedEntry is a claimed entry read from the queue, on its way to its host.
type queuedEntry struct {
	key string
	p   *pendingRevocation
}

// revokers send one pass's revocations per host, the hosts side by side:
// each host has its own few workers and a bounded backlog. The walk waits for
// room in a host's backlog, so a healthy host drains at its own pace; a host
// whose backlog stays full (it does not answer) is left for the next pass,
// so it holds up only its own tokens.
type revokers struct {
	b        *backend
	ctx      context.Context
	s        logical.Storage
	role     string
	mode     passMode
	hosts    *hostHealth
	byHost   map[string]chan queuedEntry // used by the walk only
	stalled  map[string]bool             // hosts whose backlog stayed full; used by the walk only
	wg       sync.WaitGroup
	mu       sync.Mutex // guards tally and errs
	tally    revocationTally
	errs     []error
	stallFor time.Duration
}

const (
	// hostBacklog is how many claimed entries wait for one host's workers.
	hostBacklog = 64
	// hostStall is how long the walk waits for room in a host's backlog
	// before it leaves that host's entries to the next pass.
	hostStall = 5 * time.Second
)

func (b *backend) newRevokers(ctx context.Context, s logical.Storage, role string, mode passMode, hosts *hostHealth) *revokers {
	return &revokers{b: b, ctx: ctx, s: s, role: role, mode: mode, hosts: hosts,
		byHost: map[string]chan queuedEntry{}, stalled: map[string]bool{}, stallFor: hostStall}
}

func (r *revokers) count(f func(t *revocationTally)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.tally)
}

func (r *revokers) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

// walk claims and reads each of keys, settles at once what needs no call,
// and hands the rest to their host. A periodic pass skips an entry someone
// else works on (its owner settles it, or leaves it for the next pass); a
// flush waits for it, so it answers for every entry of the role.
func (r *revokers) walk(keys []string) {
	b, ctx, s, role := r.b, r.ctx, r.s, r.role
	for _, key := range keys {
		if ctx.Err() != nil {
			return
		}
		if r.mode == passFlush {
			if b.claims.claim(ctx, key) != nil {
				return
			}
		} else if !b.claims.tryClaim(key) {
			continue
		}
		p, err := getJSON[pendingRevocation](ctx, s, key)
		now := b.now()
		switch {
		case errors.Is(err, errCorrupt):
			if b.setAside(ctx, s, role, key) {
				r.count(func(t *revocationTally) { t.setAside++ })
			}
		case err != nil && ctx.Err() != nil: // cut off: the next pass reads it
		case err != nil:
			// One entry storage cannot read (now, or ever) blocks nothing:
			// it waits, and is read again by the next pass.
			b.Logger().Warn("could not read a queued revocation; it waits for the next pass", "role", role, "error", err)
			r.count(func(t *revocationTally) { t.pending++; t.unreadable++ })
		case p == nil: // gone since the listing
		case b.nothingToRevoke(p.revocable):
			b.dequeue(context.WithoutCancel(ctx), s, role, key) // decided: keep it, cut off or not
			r.count(func(t *revocationTally) { t.expired++ })
		case r.mode == passPeriodic && now.Before(p.RetryAt):
			r.count(func(t *revocationTally) { t.wait(p.UserID) })
		default:
			if r.send(queuedEntry{key, p}) {
				continue // claimed until tried
			}
			r.count(func(t *revocationTally) { t.wait(p.UserID) })
		}
		b.claims.release(key)
	}
}

// send hands q to its host's workers, starting them on the host's first
// entry; false when the host is down or stalled this pass, or the pass ends.
func (r *revokers) send(q queuedEntry) bool {
	id := q.p.CredentialsID
	ch := r.byHost[id]
	if ch == nil {
		ch = make(chan queuedEntry, hostBacklog)
		r.byHost[id] = ch
		for range revokesPerHost {
			r.wg.Add(1)
			go r.work(ch)
		}
	}
	select {
	case ch <- q:
		return true
	default:
	}
	if r.stalled[id] || r.hosts.down(id) {
		return false
	}
	stall := time.NewTimer(r.stallFor)
	defer stall.Stop()
	select {
	case ch <- q:
		return true
	case <-r.ctx.Done():
		return false
	case <-stall.C:
		r.stalled[id] = true
		return false
	}
}

func (r *revokers) work(ch <-chan queuedEntry) {
	defer r.wg.Done()
	for q := range ch {
		outcome, err := r.b.tryQueued(r.ctx, r.s, r.role, q.key, q.p, r.hosts)
		r.b.claims.release(q.key)
		r.count(func(t *revocationTally) {
			switch outcome {
			case tryRevoked:
				t.revoked++
			case tryRefused:
				t.refuse(q.p.UserID)
			case tryMoot:
			default:
				t.wait(q.p.UserID)
			}
		})
		if err != nil {
			r.fail(err)
		}
	}
}

// finish waits for every host's workers and returns what the pass did.
func (r *revokers) finish() (revocationTally, error) {
	for _, ch := range r.byHost {
		close(ch)
	}
	r.wg.Wait()
	return r.tally, errors.Join(r.errs...)
}

type tryOutcome int

const (
	tryPending tryOutcome = iota
	tryRevoked
	tryRefused
	tryMoot // back in service: nothing to revoke
)

// tryQueued makes one attempt at a queued entry its caller has claimed,
// unless its host is down this pass, the pass is out of time, or the token
// is still stored where it was taken from (a flush whose delete failed put
// it back in service). A failure of Connect's sets the token's own back-off.
func (b *backend) tryQueued(ctx context.Context, s logical.Storage, role, key string, p *pendingRevocation, hosts *hostHealth) (tryOutcome, error) {
	if ctx.Err() != nil || hosts.down(p.CredentialsID) {
		return tryPending, nil
	}
	switch moot, err := b.stillServed(ctx, s, *p); {
	case err != nil:
		return tryPending, err
	case moot:
		// Back in service (a flush or a publish whose write failed yet
		// landed, or whose undo failed): not revoked under its readers,
		// and the next flush takes it out of service again.
		b.Logger().Warn("a queued token is still stored for its role; it stays in service and leaves the queue", "role", role)
		b.dequeue(context.WithoutCancel(ctx), s, role, key)
		return tryMoot, nil
	}
	permanent, err := b.revokeUpstream(ctx, s, role, p.revocable)
	var failure *revokeFailure
	fromConnect := errors.As(err, &failure)
	switch {
	case err == nil:
		hosts.record(p.CredentialsID, true)
	case permanent:
		b.Logger().Warn("Connect refused to revoke a token; it stays live until it expires", "role", role, "expires_at", p.ExpiresAt, "error", err)
	case ctx.Err() != nil:
		return tryPending, nil // the pass ran out of time, not the token's fault
	case !fromConnect:
		return tryPending, err // the engine's own trouble (storage): not the token's fault either
	default:
		hosts.record(p.CredentialsID, false)
		p.Failures++
		p.RetryAt = b.now().Add(retryDelay(p.Failures))
		b.Logger().Warn("could not revoke a token for now; it is no longer handed out and will be retried", "role", role, "failures", p.Failures, "retry_at", p.RetryAt, "error", err)
		if perr := putJSON(context.WithoutCancel(ctx), s, key, p); perr != nil {
			b.Logger().Debug("could not record a failed revocation's back-off; the next pass tries it again", "role", role, "error", perr)
		}
		return tryPending, nil
	}
	b.dequeue(context.WithoutCancel(ctx), s, role, key)
	if permanent {
		return tryRefused, nil
	}
	return tryRevoked, nil
}

// setAside moves a queued entry that cannot be decoded out of the queue, for
// an operator to inspect: read again, it would fail every pass. Its key names
// only a hash of the token, so it can be logged. It reports whether it moved.
func (b *backend) setAside(ctx context.Context, s logical.Storage, role, key string) bool {
	entry, err := s.Get(ctx, key)
	if err != nil || entry == nil {
		return false // a later pass tries again
	}
	aside := asideStoragePrefix + strings.TrimPrefix(key, revokingStoragePrefix)
	if err := s.Put(ctx, &logical.StorageEntry{Key: aside, Value: entry.Value, SealWrap: true}); err != nil {
		b.Logger().Warn("could not set aside a queued revocation that cannot be decoded; the next pass tries again", "role", role, "error", err)
		return false
	}
	b.metrics.revocation(revocationSetAside)
	b.Logger().Error("a queued revocation could not be decoded and was set aside; the token, if any, expires by itself", "role", role, "set_aside_at", aside)
	b.dequeue(ctx, s, role, key)
	return true
}
