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

// revokingStoragePrefix is the revocation queue: revoking/<role>/<id> holds
// a token that must be revoked at Connect and is never handed out again. It
// stays queued until Connect revokes or refuses it, or it expires: whoever
// queued it tries once at once, and the periodic function, and a flush of
// its role, retry it.
const revokingStoragePrefix = "revoking/"

// verifyQueue is the queue of tokens minted to verify credentials on a config
// write. Role names cannot contain '@', so no role shares it.
const verifyQueue = "@verify"

// revokeRetryTimeout bounds one role's turn in a periodic retry pass; roles
// take their turns side by side, so a host that never answers holds up only
// the tokens it minted.
const revokeRetryTimeout = 30 * time.Second

// revokeRetryWorkers is how many roles' queues a retry pass works at once.
const revokeRetryWorkers = 8

// pendingRevocation is a queued token.
type pendingRevocation struct {
	Role   string `json:"role"`
	UserID string `json:"user_id,omitempty"`
	revocable
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

func pendingKey(role, token string) string {
	sum := sha256.Sum256([]byte(token))
	return revokingStoragePrefix + role + "/" + hex.EncodeToString(sum[:16])
}

// queueRevocation moves a token to the revoking state.
func (b *backend) queueRevocation(ctx context.Context, s logical.Storage, role, userID string, r revocable) error {
	p := pendingRevocation{Role: role, UserID: userID, revocable: r}
	if err := putJSON(ctx, s, pendingKey(role, r.AccessToken), p); err != nil {
		return err
	}
	b.queued.add(role, "", 1)
	return nil
}

// revokeSoon revokes a token nobody will hold (an unusable answer, one too
// short to lease, one that could not be stored or whose reader left, one a
// WAL rollback found). It is queued first, so a failure, or a crash, leaves
// it to the retries; then tried once, on a context that outlives the request
// that gave up on it. revoked reports whether it is gone (or needs nothing);
// err is set only when it is neither revoked nor queued.
func (b *backend) revokeSoon(ctx context.Context, s logical.Storage, role, userID string, r revocable, why string) (revoked bool, err error) {
	if r.AccessToken == "" || r.expired(b.now()) {
		return true, nil
	}
	// The queue write must happen even as the mount is cleaned up (a flight
	// cancelled mid-publish lands here); the attempt at Connect need not:
	// it ends with the mount, and the queue has the token.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	queueErr := b.queueRevocation(ctx, s, role, userID, r)
	tryCtx, cancelTry := context.WithCancel(ctx)
	defer cancelTry()
	defer context.AfterFunc(b.bg.ctx, cancelTry)()
	permanent, err := b.revokeUpstream(tryCtx, s, role, r)
	switch {
	case err == nil || permanent:
		if err != nil {
			b.Logger().Warn("Connect refused to revoke a token that was not handed out; it expires by itself", "role", role, "reason", why, "expires_at", r.ExpiresAt, "error", err)
		}
		if queueErr == nil {
			b.dequeue(ctx, s, role, r.AccessToken)
		}
		return true, nil
	case queueErr != nil:
		b.Logger().Error("could not revoke a token that was not handed out, nor queue it for retries", "role", role, "reason", why, "expires_at", r.ExpiresAt, "error", err, "queue_error", queueErr)
		return false, fmt.Errorf("revoking a token that was not handed out: %w; queueing it: %w", err, queueErr)
	}
	b.Logger().Warn("could not revoke a token that was not handed out for now; it is queued and retried every minute", "role", role, "reason", why, "error", err)
	return false, nil
}

// dequeue drops a queued token that needs nothing more. A failure only means
// the next pass finds it revoked (Connect answers 200) or expired.
func (b *backend) dequeue(ctx context.Context, s logical.Storage, role, token string) {
	if err := s.Delete(ctx, pendingKey(role, token)); err != nil {
		b.Logger().Debug("could not drop a revoked token from the queue; the next pass will", "role", role, "error", err)
		return
	}
	b.queued.add(role, "", -1)
}

// revocationPass remembers, for one pass over the queue, the credentials
// (hence hosts) that failed for now: their other tokens wait for the next
// pass, so a host that does not answer costs one attempt per pass, however
// many roles and tokens it minted.
type revocationPass struct {
	mu          sync.Mutex
	unavailable map[string]bool // credentials id -> failed for now
}

func newRevocationPass() *revocationPass {
	return &revocationPass{unavailable: map[string]bool{}}
}

func (p *revocationPass) down(credentialsID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.unavailable[credentialsID]
}

func (p *revocationPass) markDown(credentialsID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unavailable[credentialsID] = true
}

// revocationTally is what one pass over a role's queue did: how many
// tokens it revoked at Connect and how many it dropped without a call as
// already expired; refused and pending describe the tokens Connect refused
// and those still waiting.
type revocationTally struct {
	revoked, expired int
	refused, pending []string
}

// revokeQueued tries every queued token of a role once. A token revoked,
// expired or refused for good leaves the queue. Tokens are tried per
// host (credentials), the hosts side by side, so a host that never answers
// holds up only its own tokens; after its first failure this pass the rest of
// them wait for the next.
func (b *backend) revokeQueued(ctx context.Context, s logical.Storage, role string, pass *revocationPass) (revocationTally, error) {
	prefix := revokingStoragePrefix + role + "/"
	b.queued.startCount(role)
	keys, err := s.List(ctx, prefix)
	if err != nil {
		return revocationTally{}, fmt.Errorf("listing pending revocations: %w", err)
	}
	b.queued.listedUnit(role, "", len(keys))
	defer b.queued.finishCount(role)
	type queued struct {
		key string
		p   *pendingRevocation
	}
	byHost := map[string][]queued{}
	for _, k := range keys {
		p, err := getJSON[pendingRevocation](ctx, s, prefix+k)
		if err != nil {
			return revocationTally{}, err
		}
		if p != nil {
			byHost[p.CredentialsID] = append(byHost[p.CredentialsID], queued{prefix + k, p})
		}
	}

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		errs  []error
		tally revocationTally
	)
	note := func(list *[]string, p *pendingRevocation) {
		mu.Lock()
		*list = append(*list, describeToken(p.UserID))
		mu.Unlock()
	}
	count := func(n *int) {
		mu.Lock()
		*n++
		mu.Unlock()
	}
	for credentialsID, tokens := range byHost {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, q := range tokens {
				if ctx.Err() != nil || (pass.down(credentialsID) && !q.p.expired(b.now())) {
					note(&tally.pending, q.p)
					continue
				}
				expired := q.p.expired(b.now())
				permanent, err := b.revokeUpstream(ctx, s, role, q.p.revocable)
				switch {
				case err == nil && expired:
					count(&tally.expired)
				case err == nil:
					count(&tally.revoked)
				case permanent:
					note(&tally.refused, q.p)
					b.Logger().Warn("Connect refused to revoke a token; it stays live until it expires", "role", role, "expires_at", q.p.ExpiresAt, "error", err)
				default:
					pass.markDown(credentialsID)
					note(&tally.pending, q.p)
					b.Logger().Warn("could not revoke a token for now; it is no longer handed out and will be retried", "role", role, "error", err)
					continue
				}
				if err := s.Delete(ctx, q.key); err != nil {
					mu.Lock()
					errs = append(errs, storageError("deleting pending revocation", err))
					mu.Unlock()
					return
				}
				b.queued.add(role, "", -1)
			}
		}()
	}
	wg.Wait()
	slices.Sort(tally.refused)
	slices.Sort(tally.pending)
	return tally, errors.Join(errs...)
}

// retryRevocations is the periodic function's pass over every role's queue.
// Roles take their turns side by side, each bounded on its own, so one
// role's stuck host or long queue never delays another role's revocations.
func (b *backend) retryRevocations(ctx context.Context, s logical.Storage) error {
	dirs, err := s.List(ctx, revokingStoragePrefix)
	if err != nil {
		return fmt.Errorf("listing pending revocations: %w", err)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	sem := make(chan struct{}, revokeRetryWorkers)
	pass := newRevocationPass()
	counted := map[string]bool{}
	for _, dir := range dirs {
		role := strings.TrimSuffix(dir, "/")
		counted[role] = true
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			roleCtx, cancel := context.WithTimeout(ctx, revokeRetryTimeout)
			defer cancel()
			if _, err := b.revokeQueued(roleCtx, s, role, pass); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("role %q: %w", role, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	b.queued.finishPass(counted)
	return errors.Join(errs...)
}
