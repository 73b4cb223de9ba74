package instacart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
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
//   - one pass at a time walks a role's queue (its turn); a pass cut off by
//     its deadline keeps what it did and the next goes on from the shard
//     where it stopped.
//
// Counts are exact: every change goes between beginChange and endChange,
// and each listing a pass makes recounts what it listed (queue_counts.go).
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
	// From is the key the token was to be dropped from (a flush) or stored
	// at (a publish that failed): while that key holds it, it is served, so
	// it is not revoked and its entry is moot.
	From string `json:"from,omitempty"`
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

// revokeNow is how every revocation starts (a lease revocation, a token
// nobody will hold): revokeOnce, then, for a token neither revoked nor
// queued (storage and Connect failing at once), keepTrying in the
// background, since it is held only in memory. revoked reports whether it is
// gone (or needs nothing); err is set only when it is neither revoked nor
// queued.
func (b *backend) revokeNow(ctx, tryCtx context.Context, s logical.Storage, p pendingRevocation, why string) (revoked bool, err error) {
	revoked, err = b.revokeOnce(ctx, tryCtx, s, p, why)
	if err != nil {
		b.keepTrying(s, p, why)
	}
	return revoked, err
}

// revokeOnce is the one immediate attempt: under the entry's claim, queue
// the token, try it once at Connect on tryCtx, and drop it from the queue if
// that settled it. The queue write outlives the caller; the token is tried
// even when it cannot be queued, since it is in hand.
func (b *backend) revokeOnce(ctx, tryCtx context.Context, s logical.Storage, p pendingRevocation, why string) (revoked bool, err error) {
	if b.nothingToRevoke(p.revocable) {
		return true, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	key := pendingKey(p.Role, p.AccessToken)
	if err := b.claims.claim(ctx, key); err != nil {
		// Whoever holds the entry this long is working on it: it is
		// queued, unless storage says otherwise.
		if entry, gerr := s.Get(ctx, key); gerr != nil || entry == nil {
			return false, fmt.Errorf("the token's revocation is held by another attempt, and it is not queued: %w", err)
		}
		return false, nil
	}
	defer b.claims.release(key)
	_, queueErr := b.enqueue(ctx, s, key, p)
	switch moot, err := b.stillServed(ctx, s, p); {
	case moot:
		// Stored where it was to be dropped from, or stored by a write
		// that failed yet landed: it is live and served, not revoked.
		if queueErr == nil {
			b.dequeue(ctx, s, p.Role, key)
		}
		return false, nil
	case err != nil && queueErr != nil:
		return false, fmt.Errorf("checking whether the token is still stored: %w; queueing it: %w", err, queueErr)
	case err != nil:
		return false, nil // queued: the pass checks again before it tries
	}
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
		b.Logger().Error("could not revoke a token, nor queue it; it is tried again in the background while the mount runs", "role", p.Role, "reason", why, "expires_at", p.ExpiresAt, "error", err, "queue_error", queueErr)
		return false, fmt.Errorf("revoking the token: %w; queueing it: %w", err, queueErr)
	}
	b.Logger().Warn("could not revoke a token for now; it is queued and retried every minute", "role", p.Role, "reason", why, "error", err)
	return false, nil
}

// revokeSoon revokes a token nobody will hold (an unusable answer, one too
// short to lease, one that could not be stored or whose reader left, one a
// WAL rollback found, a verify token), tried on a context that outlives the
// request that gave up on it but not the mount.
func (b *backend) revokeSoon(ctx context.Context, s logical.Storage, p pendingRevocation, why string) (revoked bool, err error) {
	tryCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	defer context.AfterFunc(b.bg.ctx, cancel)()
	return b.revokeNow(ctx, tryCtx, s, p, why)
}

// keepTrying tries again, in the background, a token neither revoked nor
// queued: it is only in memory.
func (b *backend) keepTrying(s logical.Storage, p pendingRevocation, why string) {
	if !b.bg.goDetached(inHandRetryWindow, func(bgCtx context.Context) { b.retryInHand(bgCtx, s, p, why) }) {
		b.lastTry(s, p, why) // the mount is being cleaned up
	}
}

// lastTry is the last attempt at a token held only in memory as the mount
// is cleaned up: on a context of its own (bounded), so that storage, which
// the next process shares, gets it queued if it takes writes at all.
func (b *backend) lastTry(s logical.Storage, p pendingRevocation, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if _, err := b.revokeOnce(ctx, ctx, s, p, why); err != nil {
		b.Logger().Error("gave up revoking a token held by nothing as the mount was cleaned up; it expires by itself", "role", p.Role, "reason", why, "expires_at", p.ExpiresAt)
	}
}

// stillServed reports whether p's token is still stored at the key it was
// to be dropped from (From): then it is live and served, and its queue entry
// is moot.
func (b *backend) stillServed(ctx context.Context, s logical.Storage, p pendingRevocation) (bool, error) {
	if p.From == "" {
		return false, nil
	}
	stored, err := b.tokens.load(ctx, s, p.From)
	if err != nil {
		return false, storageError("checking where a queued token was to be dropped from", err)
	}
	return stored != nil && stored.AccessToken == p.AccessToken, nil
}

// inHandRetryWindow bounds the background retries of a token held only in
// memory.
const inHandRetryWindow = 10 * time.Minute

// retryInHand tries, backing off, to revoke or queue a token held only in
// memory, until it is one or the other, it expires, or the window (or the
// mount) ends.
func (b *backend) retryInHand(ctx context.Context, s logical.Storage, p pendingRevocation, why string) {
	wait := time.Second
	for {
		left := p.ExpiresAt.Sub(b.now())
		if left <= 0 {
			return // expired: nothing left to revoke
		}
		if err := b.sleep(ctx, min(wait, left)); err != nil {
			if b.bg.ctx.Err() != nil {
				b.lastTry(s, p, why)
			} else {
				b.Logger().Error("gave up revoking a token held by nothing; it expires by itself", "role", p.Role, "reason", why, "expires_at", p.ExpiresAt)
			}
			return
		}
		tryCtx, cancel := context.WithTimeout(ctx, cleanupTimeout)
		_, err := b.revokeOnce(ctx, tryCtx, s, p, why)
		cancel()
		if err == nil {
			return
		}
		wait = min(2*wait, time.Minute)
	}
}

// retryRevocations is the periodic function's pass over every role's queue.
// Roles take their turns side by side, each bounded on its own, so one
// role's stuck host or long queue never delays another role's revocations.
func (b *backend) retryRevocations(ctx context.Context, s logical.Storage) error {
	before := b.queued.allVersions()
	dirs, err := s.List(ctx, revokingStoragePrefix)
	if err != nil {
		return storageError("listing the revocation queues", err)
	}
	b.queued.listedQueues(dirs, before)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
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
			if _, err := b.drainQueue(roleCtx, s, role, passPeriodic, hosts); err != nil && roleCtx.Err() == nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("role %q: %w", role, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
