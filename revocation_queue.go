package instacart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// The revocation queue holds every token that must be revoked at Connect and
// is never handed out again, until Connect revokes or refuses it, or it
// expires: revoking/<role>/<shard>/<id>, the shard being the first two hex
// digits of the id, so that no pass lists more than a shard of a role's
// queue (a flush of a million shoppers' tokens during an outage queues a
// million). The previous release's flat revoking/<role>/<id> entries are
// read and revoked the same way, in the role's folder.
//
// One owner at a time, by construction:
//   - an entry is claimed by whoever works on it (queueing, trying, dropping
//     it, or taking a token out of service), so no two revoke, count or undo
//     the same entry (queueClaims);
//   - one pass at a time walks a role's queue (its turn), and only a pass
//     counts it; a pass cut off by its deadline keeps what it did and the
//     next goes on from the shard where it stopped.
const revokingStoragePrefix = "revoking/"

// asideStoragePrefix holds queued entries that could not be decoded, set
// aside for an operator to inspect rather than read again every pass. Role
// names cannot contain '@', so no role's queue is named so.
const asideStoragePrefix = revokingStoragePrefix + "@aside/"

// verifyQueue is the queue of tokens minted to verify credentials on a config
// write. Role names cannot contain '@', so no role shares it.
const verifyQueue = "@verify"

const (
	// revokeRetryTimeout bounds one role's periodic pass; roles take their
	// turns side by side, so a host that never answers holds up only the
	// tokens it minted, and a long queue goes on in the next pass.
	revokeRetryTimeout = 30 * time.Second
	// revokeRetryWorkers is how many roles' queues a periodic pass works at once.
	revokeRetryWorkers = 8
	// revokesPerHost is how many revocations a pass sends one host at once:
	// a queue drains at the host's pace, not one round trip at a time.
	revokesPerHost = 4
	// hostDownAfter consecutive transient failures, a host is left alone
	// for the rest of the pass: one token that keeps failing does not stop
	// the others, and a host that is down costs a few attempts per pass.
	hostDownAfter = 3
	// retryBackoffMax caps how long a token that keeps failing waits
	// between periodic attempts (a flush tries it at once regardless).
	retryBackoffMax = time.Hour
	// namedInReport caps how many tokens a flush names in its answer.
	namedInReport = 20
)

// pendingRevocation is a queued token: what revoking it needs, and how it
// has fared so far. It is the one value that travels through the queue.
type pendingRevocation struct {
	Role   string `json:"role"`
	UserID string `json:"user_id,omitempty"`
	revocable
	// Failures counts transient failures to revoke it; the periodic pass
	// leaves it alone until RetryAt, so a token that keeps failing waits on
	// its own schedule while the others go on.
	Failures int       `json:"failures,omitempty"`
	RetryAt  time.Time `json:"retry_at,omitzero"`
}

// describeToken names a token in warnings and errors, which Vault's audit log
// does not HMAC: never by its value, and a user's only by a short hash of
// the user id.
func describeToken(userID string) string {
	if userID == "" {
		return "the role-wide token"
	}
	sum := sha256.Sum256([]byte(userID))
	return "the token of user #" + hex.EncodeToString(sum[:6])
}

// queuePrefix is the folder of a role's queue.
func queuePrefix(role string) string { return revokingStoragePrefix + role + "/" }

// pendingKey is where token waits in role's queue.
func pendingKey(role, token string) string {
	sum := sha256.Sum256([]byte(token))
	id := hex.EncodeToString(sum[:16])
	return queuePrefix(role) + id[:shardDigits] + "/" + id
}

// queueUnit is the unit a queued key counts in: its shard, or "" for the
// previous release's flat keys in the role's folder.
func queueUnit(role, key string) tokenUnit {
	rest := strings.TrimPrefix(key, queuePrefix(role))
	if shard, _, ok := strings.Cut(rest, "/"); ok {
		return shard
	}
	return ""
}

// retryDelay is how long a token waits after its n-th transient failure in
// a row: the next pass tries it again after one or two (a blip), then it
// waits a minute, doubling up to retryBackoffMax.
func retryDelay(failures int) time.Duration {
	if failures < 3 {
		return 0
	}
	return min(time.Minute<<min(failures-3, 10), retryBackoffMax)
}

// queueClaims gives each queued entry, and each role's queue, one owner at a time.
type queueClaims struct {
	mu      sync.Mutex
	entries map[string]chan struct{} // claimed key -> closed when released
	turns   map[string]*queueTurn    // role -> its pass turn
}

// queueTurn is a role's pass turn: hold it by taking the token from ch.
type queueTurn struct {
	ch chan struct{}
	// next is the unit the next pass starts at ("" from the start); only the
	// holder of the turn reads or writes it.
	next tokenUnit
}

func newQueueClaims() *queueClaims {
	return &queueClaims{entries: map[string]chan struct{}{}, turns: map[string]*queueTurn{}}
}

// tryClaim claims key unless someone holds it.
func (c *queueClaims) tryClaim(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, held := c.entries[key]; held {
		return false
	}
	c.entries[key] = make(chan struct{})
	return true
}

// claim waits, within ctx, to claim key.
func (c *queueClaims) claim(ctx context.Context, key string) error {
	for {
		c.mu.Lock()
		held, busy := c.entries[key]
		if !busy {
			c.entries[key] = make(chan struct{})
			c.mu.Unlock()
			return nil
		}
		c.mu.Unlock()
		select {
		case <-held:
		case <-ctx.Done():
			return fmt.Errorf("waiting for another revocation of the same token: %w", ctx.Err())
		}
	}
}

// release gives key up.
func (c *queueClaims) release(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.entries[key]; ok {
		close(ch)
		delete(c.entries, key)
	}
}

// turn is role's pass turn.
func (c *queueClaims) turn(role string) *queueTurn {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.turns[role]
	if t == nil {
		t = &queueTurn{ch: make(chan struct{}, 1)}
		t.ch <- struct{}{}
		c.turns[role] = t
	}
	return t
}

// take waits within ctx for the turn (wait) or takes it only if free.
func (t *queueTurn) take(ctx context.Context, wait bool) (bool, error) {
	if !wait {
		select {
		case <-t.ch:
			return true, nil
		default:
			return false, nil
		}
	}
	select {
	case <-t.ch:
		return true, nil
	case <-ctx.Done():
		return false, fmt.Errorf("waiting for the pass over the queue already running: %w", ctx.Err())
	}
}

func (t *queueTurn) give() { t.ch <- struct{}{} }

// enqueue records p at key, for a caller holding key's claim, and counts it
// if it was not queued already (a lease whose revocation Vault retries):
// fresh says so.
func (b *backend) enqueue(ctx context.Context, s logical.Storage, key string, p pendingRevocation) (fresh bool, err error) {
	prev, err := s.Get(ctx, key)
	if err != nil {
		return false, storageError("reading the revocation queue", err)
	}
	unit := queueUnit(p.Role, key)
	b.queued.beginChange(p.Role, unit)
	err = putJSON(ctx, s, key, p)
	b.queued.endChange(p.Role, unit, 1, err == nil && prev == nil)
	if err != nil {
		return false, err
	}
	return prev == nil, nil
}

// dequeue drops a queued entry that needs nothing more, for a caller holding
// its claim that knows it is stored. A failure only means a later pass finds
// it revoked (Connect answers 200) or expired.
func (b *backend) dequeue(ctx context.Context, s logical.Storage, role, key string) {
	unit := queueUnit(role, key)
	b.queued.beginChange(role, unit)
	err := s.Delete(ctx, key)
	b.queued.endChange(role, unit, -1, err == nil)
	if err != nil {
		b.Logger().Debug("could not drop a revoked token from the queue; a later pass will", "role", role, "error", err)
	}
}

// revokeNow is the immediate attempt every revocation starts with (a lease
// revocation, a token nobody will hold): under the entry's claim, queue the
// token, try it once at Connect on tryCtx, and drop it from the queue if
// that settled it. The queue write outlives the caller; the token is tried
// even when it cannot be queued, since it is in hand. revoked reports
// whether it is gone (or needs nothing); err is set only when it is neither
// revoked nor queued.
func (b *backend) revokeNow(ctx, tryCtx context.Context, s logical.Storage, p pendingRevocation, why string) (revoked bool, err error) {
	if p.AccessToken == "" || p.expired(b.now()) {
		if p.AccessToken != "" {
			b.metrics.revocation(revocationSkippedExpired)
		}
		return true, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	key := pendingKey(p.Role, p.AccessToken)
	if err := b.claims.claim(ctx, key); err != nil {
		// Only a pass over the queue holds a key this long, and it holds
		// only stored entries: the token is queued, and that pass has it.
		return false, nil
	}
	defer b.claims.release(key)
	_, queueErr := b.enqueue(ctx, s, key, p)
	permanent, err := b.revokeUpstream(tryCtx, s, p.Role, p.revocable)
	switch {
	case err == nil || permanent:
		if err != nil {
			b.Logger().Warn("Connect refused to revoke a token; it stays live until it expires", "role", p.Role, "reason", why, "expires_at", p.ExpiresAt, "error", err)
		}
		if queueErr == nil {
			b.dequeue(ctx, s, p.Role, key)
		}
		return true, nil
	case queueErr != nil:
		b.Logger().Error("could not revoke a token, nor queue it for retries", "role", p.Role, "reason", why, "expires_at", p.ExpiresAt, "error", err, "queue_error", queueErr)
		return false, fmt.Errorf("revoking the token: %w; queueing it: %w", err, queueErr)
	}
	b.Logger().Warn("could not revoke a token for now; it is queued and retried every minute", "role", p.Role, "reason", why, "error", err)
	return false, nil
}

// revokeSoon revokes a token nobody will hold (an unusable answer, one too
// short to lease, one that could not be stored or whose reader left, one a
// WAL rollback found, a verify token), tried on a context that outlives the
// request that gave up on it but not the mount.
func (b *backend) revokeSoon(ctx context.Context, s logical.Storage, role, userID string, r revocable, why string) (revoked bool, err error) {
	tryCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	defer context.AfterFunc(b.bg.ctx, cancel)()
	return b.revokeNow(ctx, tryCtx, s, pendingRevocation{Role: role, UserID: userID, revocable: r}, why)
}

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
// waiting, and set aside as undecodable; named describes the refused and
// waiting ones (at most namedInReport); complete is false when the pass
// stopped before the end of the queue.
type revocationTally struct {
	revoked, expired, refused, pending, setAside int
	refusedNames, pendingNames                   []string
	complete                                     bool
}

func (t *revocationTally) note(names *[]string, userID string) {
	if len(*names) < namedInReport {
		*names = append(*names, describeToken(userID))
	}
}

// passMode says how a pass treats the turn and each token's back-off.
type passMode int

const (
	passPeriodic passMode = iota // skips a role whose pass is running; honours back-off
	passFlush                    // waits for the turn; tries every token now
)

// drainQueue is one pass over role's queue, a shard at a time from where the
// last pass stopped: it revokes as it goes, drops expired entries without a
// call, and sets undecodable ones aside. It stops at ctx's end, keeping what
// it did. A periodic pass skips a role whose pass is already running.
func (b *backend) drainQueue(ctx context.Context, s logical.Storage, role string, mode passMode, hosts *hostHealth) (revocationTally, error) {
	turn := b.claims.turn(role)
	got, err := turn.take(ctx, mode == passFlush)
	if !got {
		return revocationTally{}, err
	}
	defer turn.give()

	prefix := queuePrefix(role)
	legacyVersion := b.queued.unitVersion(role, "")
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
	// Units are listed in order; a flush starts over, a periodic pass where
	// the last one stopped. Only a walk from the start counts the role.
	start := 0
	if mode == passPeriodic {
		for start < len(units) && units[start] < turn.next {
			start++
		}
	}
	counting := start == 0
	if counting {
		b.queued.startCount(role)
	}
	rv := b.newRevokers(ctx, s, role, hosts)
	stoppedAt, stopped := tokenUnit(""), false
	for _, unit := range units[start:] {
		keys, version := legacy, legacyVersion
		if unit != "" {
			version = b.queued.unitVersion(role, unit)
			names, err := s.List(ctx, prefix+unit+"/")
			if err != nil {
				rv.fail(storageError("listing the revocation queue", err))
				continue
			}
			keys = make([]string, len(names))
			for i, n := range names {
				keys[i] = prefix + unit + "/" + n
			}
		}
		if counting {
			b.queued.listedUnitSince(role, unit, len(keys), version)
		}
		rv.walk(keys, mode)
		if ctx.Err() != nil {
			stoppedAt, stopped = unit, true // this unit again, next time
			break
		}
	}
	tally, err := rv.finish()
	tally.complete = !stopped && err == nil && ctx.Err() == nil
	turn.next = stoppedAt
	if counting {
		if !stopped && err == nil {
			b.queued.finishCount(role)
		} else {
			b.queued.abortCount(role)
		}
	}
	return tally, err
}

// queuedEntry is a claimed entry read from the queue, on its way to its host.
type queuedEntry struct {
	key string
	p   *pendingRevocation
}

// revokers send one pass's revocations per host, the hosts side by side:
// each host has its own few workers and a bounded backlog, so a host that
// never answers holds up only its own tokens, and the walk never waits on it.
type revokers struct {
	b      *backend
	ctx    context.Context
	s      logical.Storage
	role   string
	hosts  *hostHealth
	byHost map[string]chan queuedEntry // used by the walk only
	wg     sync.WaitGroup

	mu    sync.Mutex // guards tally and errs
	tally revocationTally
	errs  []error
}

// hostBacklog is how many claimed entries wait for one host's workers; past
// it, the host's other entries wait for the next pass, unclaimed.
const hostBacklog = 64

func (b *backend) newRevokers(ctx context.Context, s logical.Storage, role string, hosts *hostHealth) *revokers {
	return &revokers{b: b, ctx: ctx, s: s, role: role, hosts: hosts, byHost: map[string]chan queuedEntry{}}
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

// walk claims (skipping what someone else works on) and reads each of keys,
// settles at once what needs no call, and hands the rest to their host.
func (r *revokers) walk(keys []string, mode passMode) {
	b, ctx, s, role := r.b, r.ctx, r.s, r.role
	for _, key := range keys {
		if ctx.Err() != nil {
			return
		}
		if !b.claims.tryClaim(key) {
			continue // its owner settles it, or leaves it queued for the next pass
		}
		p, err := getJSON[pendingRevocation](ctx, s, key)
		now := b.now()
		switch {
		case errors.Is(err, errCorrupt):
			b.setAside(ctx, s, role, key)
			r.count(func(t *revocationTally) { t.setAside++ })
		case err != nil:
			r.fail(storageError("reading the revocation queue", err))
		case p == nil: // gone since the listing
		case p.AccessToken == "" || p.expired(now):
			b.metrics.revocation(revocationSkippedExpired)
			b.dequeue(ctx, s, role, key)
			r.count(func(t *revocationTally) { t.expired++ })
		case mode == passPeriodic && now.Before(p.RetryAt):
			r.count(func(t *revocationTally) { t.pending++; t.note(&t.pendingNames, p.UserID) })
		default:
			if r.send(queuedEntry{key, p}) {
				continue // claimed until tried
			}
			r.count(func(t *revocationTally) { t.pending++; t.note(&t.pendingNames, p.UserID) })
		}
		b.claims.release(key)
	}
}

// send hands q to its host's workers, starting them on the host's first
// entry; false when the host's backlog is full.
func (r *revokers) send(q queuedEntry) bool {
	ch := r.byHost[q.p.CredentialsID]
	if ch == nil {
		ch = make(chan queuedEntry, hostBacklog)
		r.byHost[q.p.CredentialsID] = ch
		for range revokesPerHost {
			r.wg.Add(1)
			go r.work(ch)
		}
	}
	select {
	case ch <- q:
		return true
	default:
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
				t.refused++
				t.note(&t.refusedNames, q.p.UserID)
			default:
				t.pending++
				t.note(&t.pendingNames, q.p.UserID)
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
)

// tryQueued makes one attempt at a queued entry its caller has claimed,
// unless its host is down this pass or the pass is out of time. A transient
// failure sets the token's own back-off.
func (b *backend) tryQueued(ctx context.Context, s logical.Storage, role, key string, p *pendingRevocation, hosts *hostHealth) (tryOutcome, error) {
	if ctx.Err() != nil || hosts.down(p.CredentialsID) {
		return tryPending, nil
	}
	permanent, err := b.revokeUpstream(ctx, s, role, p.revocable)
	switch {
	case err == nil:
		hosts.record(p.CredentialsID, true)
	case permanent:
		b.Logger().Warn("Connect refused to revoke a token; it stays live until it expires", "role", role, "expires_at", p.ExpiresAt, "error", err)
	case ctx.Err() != nil:
		return tryPending, nil // the pass ran out of time, not the token's fault
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
// only a hash of the token, so it can be logged.
func (b *backend) setAside(ctx context.Context, s logical.Storage, role, key string) {
	entry, err := s.Get(ctx, key)
	if err != nil || entry == nil {
		return // a later pass tries again
	}
	aside := asideStoragePrefix + strings.TrimPrefix(key, revokingStoragePrefix)
	if err := s.Put(ctx, &logical.StorageEntry{Key: aside, Value: entry.Value, SealWrap: true}); err != nil {
		b.Logger().Warn("could not set aside a queued revocation that cannot be decoded; the next pass tries again", "role", role, "error", err)
		return
	}
	b.metrics.revocation(revocationSetAside)
	b.Logger().Error("a queued revocation could not be decoded and was set aside; the token, if any, expires by itself", "role", role, "set_aside_at", aside)
	b.dequeue(ctx, s, role, key)
}

// retryRevocations is the periodic function's pass over every role's queue.
// Roles take their turns side by side, each bounded on its own, so one
// role's stuck host or long queue never delays another role's revocations.
func (b *backend) retryRevocations(ctx context.Context, s logical.Storage) error {
	dirs, err := s.List(ctx, revokingStoragePrefix)
	if err != nil {
		return storageError("listing the revocation queues", err)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		errs     []error
		counted  = map[string]bool{}
		complete = true
	)
	sem := make(chan struct{}, revokeRetryWorkers)
	hosts := newHostHealth()
	for _, dir := range dirs {
		role, ok := strings.CutSuffix(dir, "/")
		if !ok || revokingStoragePrefix+dir == asideStoragePrefix {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			roleCtx, cancel := context.WithTimeout(ctx, revokeRetryTimeout)
			defer cancel()
			tally, err := b.drainQueue(roleCtx, s, role, passPeriodic, hosts)
			mu.Lock()
			defer mu.Unlock()
			counted[role] = true
			complete = complete && tally.complete
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				errs = append(errs, fmt.Errorf("role %q: %w", role, err))
			}
		}()
	}
	wg.Wait()
	if complete {
		b.queued.finishPass(counted)
	}
	return errors.Join(errs...)
}
