package instacart

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// rejection is Connect's refusal of the credentials, replayed until until.
type rejection struct {
	err   error
	until time.Time
}

// credentialsRejectedHold is how long a credentials refusal is replayed
// without asking Connect again.
const credentialsRejectedHold = time.Minute

// errMintQueue: the request's deadline passed while it waited for a mint
// slot, before anything was sent to Connect.
var errMintQueue = errors.New("waiting for a free token request slot (config max_concurrent_mints)")

// errShuttingDown: the mount is being cleaned up (unmounted, sealed, reloaded).
var errShuttingDown = logical.CodedError(http.StatusServiceUnavailable, "the secrets engine is shutting down; try again")

// sizeMintSlots fits the mount's one pool of mint slots (b.mintSlots, served
// round robin by role so a busy role cannot starve the others) to e's
// max_concurrent_mints as e becomes the current snapshot; b.publishMu is
// held. Only the current configuration sizes it: a request holding an older
// snapshot uses the same pool, so two configurations in use at once never
// run more mints than the larger bound (each sizing a pool of its own, they
// swapped pools back and forth and ran them all). The pool belongs to the
// backend, so rebuilding the snapshot forgets nothing in flight.
func (b *backend) sizeMintSlots(snap *configSnapshot) {
	if snap == nil || snap.client == nil {
		return // no configuration to follow: keep the bound in force
	}
	if n := snap.config.mintBound(); b.mintSlots.Size() != n {
		b.mintSlots.Resize(n)
	}
}

// acquireMintSlot waits, within ctx, for one of the mount's mint slots.
func (b *backend) acquireMintSlot(ctx context.Context, m *mintRequest) (release func(), err error) {
	sem := b.mintSlots
	if !sem.TryAcquire() {
		b.hooks.onMintQueued()
		if err := sem.Acquire(ctx, m.roleName); err != nil {
			return nil, fmt.Errorf("%w: %w", errMintQueue, err)
		}
	}
	return sem.Release, nil
}

// mintInSlot asks Connect for m's token, for a caller that holds a mint slot,
// unless Connect recently refused the credentials, and remembers the longest
// lifetime it hands out. A token Connect named in an answer that cannot be
// used is revoked (through the queue). m.snap must have a client.
func (b *backend) mintInSlot(ctx context.Context, s logical.Storage, m *mintRequest) (*connect.Token, error) {
	snap := m.snap
	now := b.now()
	if r := snap.rejected.Load(); r != nil && now.Before(r.until) {
		return nil, r.err
	}
	req := m.connectRequest()
	req.Label = mintLabel(m)
	tok, err := snap.client.Token(ctx, req)
	if err != nil {
		ce, ok := connect.AsError(err)
		if ok && ce.CredentialsRejected() {
			snap.rejected.Store(&rejection{err: err, until: now.Add(credentialsRejectedHold)})
		}
		if unusable, named := unusableToken(ce); named {
			b.keepCredentialsFor(ctx, s, m.credentialsID(), unusable.ExpiresAt)
			b.revokeSoon(ctx, s, pendingRevocation{Role: m.roleName, UserID: m.userID, revocable: revocableToken(m.credentialsID(), unusable)}, "Connect's answer could not be used")
		}
		return nil, err
	}
	b.noteLifetime(tok.ExpiresIn)
	if tok.ExpiresIn > documentedTokenLifetime && tok.ExpiresIn > snap.config.LongestTokenLifetime {
		b.persistLifetime(ctx, s, tok.ExpiresIn)
	}
	b.keepCredentialsFor(ctx, s, m.credentialsID(), tok.ExpiresAt)
	return tok, nil
}

// mintDetached is mint on a context that outlives the caller (bounded by
// maxMintWait, ended by the mount's clean-up): a token Connect issues after
// the caller gave up is still seen, and handed to abandoned (to revoke it)
// instead of being left live with nobody holding it; abandoned also learns of
// a mint that failed after the caller left. The caller gets its answer by its
// own deadline.
func (b *backend) mintDetached(ctx context.Context, s logical.Storage, m *mintRequest, abandoned func(*connect.Token, error)) (*connect.Token, error) {
	// Wait for a slot on the caller's own deadline: a caller that leaves
	// while queued has sent nothing.
	release, err := b.acquireMintSlot(ctx, m)
	if err != nil {
		return nil, err
	}
	type result struct {
		tok *connect.Token
		err error
	}
	ch := make(chan result, 1)
	started := b.bg.goDetached(maxMintWait, func(mintCtx context.Context) {
		defer release()
		tok, err := b.mintInSlot(mintCtx, s, m)
		ch <- result{tok, err}
	})
	if !started {
		release()
		return nil, errShuttingDown
	}
	select {
	case r := <-ch:
		return r.tok, r.err
	case <-ctx.Done():
		b.bg.goDetached(maxMintWait, func(context.Context) {
			r := <-ch
			abandoned(r.tok, r.err)
		})
		return nil, fmt.Errorf("waiting for a token from Connect: %w", ctx.Err())
	}
}

// noteLifetime remembers the longest token lifetime Connect has handed out.
func (b *backend) noteLifetime(d time.Duration) {
	for {
		cur := b.longestLifetime.Load()
		if int64(d) <= cur || b.longestLifetime.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

// documentedTokenLifetime: "The token is valid for 24 hours" (Get started).
const documentedTokenLifetime = 24 * time.Hour

// retention is how long credentials retired from cfg are kept: long enough
// for every token they minted to expire. A longer lifetime than Connect
// documents, seen by this process or recorded in cfg, wins. A mint whose
// call to Connect started before the credentials were retired runs for up
// to maxMintWait more, and its token's life counts from then; a mint that
// starts later with them (a read that loaded the config before, then waited
// for a slot) has its token covered by keepCredentialsFor.
func (b *backend) retention(cfg *connectConfig) time.Duration {
	return max(time.Duration(b.longestLifetime.Load()), cfg.LongestTokenLifetime, documentedTokenLifetime) + maxMintWait
}

// keepCredentialsFor makes sure the credentials id, which minted a token
// expiring at expires, are kept until then: they may have been retired while
// the mint was in flight, with a retention counted from the rotation, not
// from the token's request. Only then does it touch storage. Best effort:
// the mint has succeeded either way.
func (b *backend) keepCredentialsFor(ctx context.Context, s logical.Storage, id string, expires time.Time) {
	if snap, err := b.getSnapshot(ctx, s); err == nil && snap.config.keeps(id, expires) {
		return // current, or retired for long enough: the usual case
	}
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := getConfig(ctx, s)
	if err == nil && cfg.retainUntil(id, expires) {
		if err = putConfig(ctx, s, cfg); err == nil {
			b.publishSnapshot(nil) // the next request loads the longer retention
		}
	}
	if err != nil {
		b.Logger().Warn("could not keep retired credentials until a token they minted late expires; revoking it may fail near the end of its life", "expires_at", expires, "error", err)
	}
}

// persistLifetime records a token lifetime longer than any recorded so far,
// so retired credentials outlive such tokens across restarts and failovers.
// Best effort: the mint has succeeded either way.
func (b *backend) persistLifetime(ctx context.Context, s logical.Storage, d time.Duration) {
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := getConfig(ctx, s)
	if err == nil && cfg.configured() && d > cfg.LongestTokenLifetime {
		cfg.LongestTokenLifetime = d
		if err = putConfig(ctx, s, cfg); err == nil {
			b.publishSnapshot(nil)
		}
	}
	if err != nil {
		b.Logger().Warn("could not record a token lifetime longer than Connect documents", "lifetime", d, "error", err)
	}
}

// unusableToken is the token Connect named in an answer the client could not
// use, if any: it was minted, so it must be revoked.
func unusableToken(ce *connect.Error) (*connect.Token, bool) {
	if ce == nil {
		return nil, false
	}
	t, ok := ce.UnusableToken()
	return &t, ok
}
