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

// This file is a shared token's way through the engine: the read (memory,
// then one coalesced refresh), the refresh (storage, then a mint), the
// fallback to the token the role still serves, and publishing a new token.
// token_cache.go holds the memory and storage they use.

// errRoleChanged: the role was deleted or redefined, or the credentials
// rotated, while a token was being minted for it; the token is revoked rather
// than stored under it.
var errRoleChanged = logical.CodedError(http.StatusConflict, "the role or the engine's credentials changed while its token was being minted; the token was revoked, read again")

// errTooShortToLease: Connect answered with a token that has less than a
// second to live.
var errTooShortToLease = logical.CodedError(http.StatusBadGateway, "Instacart Connect issued a token that expires in under a second; it was revoked, try again")

// answerMargin is kept between giving up on a refresh and the caller's
// deadline, so a reader still has time to be answered with the token it
// holds: at most this, and at most a tenth of the time the reader has.
const answerMargin = 2 * time.Second

// answerBy is ctx ending answerMargin before ctx's deadline.
func answerBy(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, deadline.Add(-min(answerMargin, time.Until(deadline)/10)))
}

// refreshed is what a refresh hands to every reader waiting on it.
type refreshed struct {
	token    *issuedToken
	warnings []string
	source   readSource // for metrics: where the token came from
}

// sharedToken returns the role's shared token for m's user, minting one when
// none is cached or the cached one is too close to expiry. Concurrent callers
// that need a new token share one Connect request. When no new token can be
// had in time, for any reason, a token the role still serves is handed out
// with a warning.
func (b *backend) sharedToken(ctx context.Context, s logical.Storage, m *mintRequest) (*issuedToken, []string, error) {
	key := m.key()
	cached := b.tokens.get(key)
	if m.serves(cached) && cached.fresh(b.now(), m.role.MinRemainingTTL) {
		b.metrics.read(m.roleName, sourceMemory)
		return cached, nil, nil
	}

	waitCtx, cancel := answerBy(ctx)
	defer cancel()
	flying := m.clone() // the flight outlives this reader; m stays off the heap on the cached path
	// The flight key includes the credentials and role versions so a mint for
	// a superseded config or role is never shared with callers of the new one.
	flight := key + "\x00" + m.credentialsID() + "\x00" + m.role.hash
	for {
		ch := b.tokens.flights.DoChan(flight, func() (any, error) {
			// The refresh must not die with the request that happened to
			// start it: other callers wait on it too. Each caller still
			// honours its own deadline; the mount's clean-up ends it.
			refreshCtx, done, ok := b.bg.detached(maxMintWait)
			if !ok {
				return nil, errShuttingDown
			}
			defer done()
			return b.refreshShared(waitCtx, refreshCtx, s, flying)
		})
		b.hooks.onSharedWait()
		select {
		case res := <-ch:
			if errors.Is(res.Err, errMintQueue) && waitCtx.Err() == nil {
				continue // the reader that started the flight left while queued; this one has time
			}
			if res.Err != nil {
				return nil, nil, res.Err
			}
			out := res.Val.(refreshed)
			b.metrics.read(m.roleName, out.source)
			return out.token, out.warnings, nil
		case <-waitCtx.Done():
			// No new token in time for this reader: the one it had, if its
			// role still serves it. The check reads storage on a context of
			// its own: woken late (a stall, a pause), the reader may have
			// used up its margin too, and a check that fails for that
			// would answer an error where a token was there to serve.
			checkCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), answerMargin)
			t, warning, ok := b.fallback(checkCtx, s, m, cached, waitCtx.Err())
			cancel()
			if ok {
				b.metrics.read(m.roleName, sourceStaleWhileDown)
				return t, []string{warning}, nil
			}
			return nil, nil, fmt.Errorf("waiting for a token from Connect: %w", waitCtx.Err())
		}
	}
}

// refreshShared runs once per flight: it takes a fresh token from storage if
// another node or an earlier process stored one, else mints and publishes
// one. When the mint fails it serves the token the role still serves, if
// any, with a warning, rather than failing readers.
//
// slotCtx is the context of the caller that started the flight: a mint slot
// is waited for within its deadline, so a reader that leaves while queued
// sends nothing (sharedToken tries again for readers that still have time).
func (b *backend) refreshShared(slotCtx, ctx context.Context, s logical.Storage, m *mintRequest) (refreshed, error) {
	key := m.key()
	gen := b.tokens.generation(key)
	candidate := b.tokens.get(key)
	var read *priorRead // what storage held at key, when it was read
	writeChecked := false
	if !m.serves(candidate) {
		version := b.tokens.version(key)
		var stored *issuedToken
		var err error
		stored, writeChecked, err = b.storedToken(slotCtx, ctx, s, m)
		if err != nil {
			return refreshed{}, err
		}
		read = &priorRead{token: stored, version: version}
		candidate = nil
		if m.serves(stored) {
			candidate = stored
		}
	}
	if candidate != nil && candidate.fresh(b.now(), m.role.MinRemainingTTL) {
		b.tokens.rememberIf(key, candidate, gen)
		return refreshed{token: candidate, source: sourceStorage}, nil
	}

	// A performance standby or secondary cannot store what it mints: let
	// Vault forward the request to the node that can, before minting. The
	// state is as of the request that started the flight (write_safe.go).
	if !writeChecked {
		if _, ok := b.writeSafe(slotCtx); !ok {
			return refreshed{}, logical.ErrReadOnly
		}
	}
	release, err := b.acquireMintSlot(slotCtx, m)
	if err == nil {
		var tok *connect.Token
		tok, err = b.mintInSlot(ctx, s, m)
		release()
		if err == nil {
			t, err := b.publishMinted(ctx, s, m, tok, read)
			return refreshed{token: t, source: sourceMinted}, err
		}
	}
	if t, warning, ok := b.fallback(ctx, s, m, candidate, err); ok {
		return refreshed{token: t, warnings: []string{warning}, source: sourceStaleWhileDown}, nil
	}
	return refreshed{}, err
}

// publishMinted makes a newly minted shared token live, or revokes it; read
// is what the refresh read at its key (nil if it read nothing).
func (b *backend) publishMinted(ctx context.Context, s logical.Storage, m *mintRequest, tok *connect.Token, read *priorRead) (*issuedToken, error) {
	t := m.issued(tok)
	if !t.leasable(b.now()) {
		b.revokeSoon(ctx, s, pendingRevocation{Role: m.roleName, UserID: m.userID, revocable: t.revocable}, "too short-lived to lease")
		return nil, errTooShortToLease
	}
	if err := b.publishShared(ctx, s, m, t, read); err != nil {
		// Nobody can see or flush a token that was not stored. A write
		// that failed may still have landed: the queue then leaves the
		// token alone while its key holds it (From).
		b.revokeSoon(ctx, s, pendingRevocation{Role: m.roleName, UserID: m.userID, From: m.key(), revocable: t.revocable}, "could not be stored")
		return nil, err
	}
	return t, nil
}

// fallback hands out candidate, with a warning saying why, when no new token
// could be had (cause) and candidate is still what m's role serves: checked
// under the role lock at answer time, so a token a flush, a newer mint, a role
// edit or a rotation took out of service meanwhile, or one that has expired,
// is never handed out.
func (b *backend) fallback(ctx context.Context, s logical.Storage, m *mintRequest, candidate *issuedToken, cause error) (*issuedToken, string, bool) {
	if candidate == nil || !m.serves(candidate) || errors.Is(cause, errShuttingDown) {
		return nil, "", false
	}
	mu := b.roleLock(m.roleName)
	mu.RLock()
	defer mu.RUnlock()
	if current, err := b.currentFor(ctx, s, m); err != nil || !current {
		return nil, "", false
	}
	stored, err := b.tokens.load(ctx, s, m.key())
	if err != nil || stored == nil || stored.AccessToken != candidate.AccessToken || !candidate.leasable(b.now()) {
		return nil, "", false
	}
	b.Logger().Warn("no new token could be had in time; serving the role's current token until it expires", "role", m.roleName, "expires_at", candidate.ExpiresAt, "error", errorSummary(cause))
	return candidate, fmt.Sprintf("no new token could be had in time (%s); this token expires at %s", errorSummary(cause), candidate.ExpiresAt.Format(time.RFC3339)), true
}

// priorRead is what a refresh read at a key, and the key's stripe version
// when it began: while the version is unchanged, nothing in this process has
// written or dropped the key since, so the read still stands and publishing
// need not read the key again (a new user's first read stores without a
// second storage read). Vault runs a mount's writes in one process: the
// active node's (standbys forward them).
type priorRead struct {
	token   *issuedToken
	version stripeVersion
}

// publishShared makes a newly minted shared token live: stored at its key,
// unless its role was deleted or redefined, or the credentials rotated, while
// it was minted. A still-valid token it replaces is kept out of service, so
// a flush can still reach it. The role lock (shared) keeps role writes,
// deletes and flushes (exclusive) from interleaving; the key lock keeps two
// publishes of one key from both replacing the same predecessor. read, if
// set, is what the refresh read at the key.
func (b *backend) publishShared(ctx context.Context, s logical.Storage, m *mintRequest, t *issuedToken, read *priorRead) error {
	mu := b.roleLock(m.roleName)
	mu.RLock()
	defer mu.RUnlock()
	current, err := b.currentFor(ctx, s, m)
	if err != nil {
		return err
	}
	if !current {
		return errRoleChanged
	}
	key := m.key()
	unlock := b.tokens.lockKey(key)
	defer unlock()
	var prev *issuedToken
	if read != nil && b.tokens.version(key) == read.version {
		prev = read.token
	} else if prev, err = b.tokens.load(ctx, s, key); err != nil {
		return err
	}
	if prev != nil && prev.AccessToken != t.AccessToken && !prev.expired(b.now()) {
		if err := putJSON(ctx, s, supersededKey(key, prev.AccessToken), prev); err != nil {
			return err
		}
		b.counts.addKey(key, 1)
	}
	if err := b.tokens.store(ctx, s, key, t); err != nil {
		return err
	}
	if prev == nil {
		b.counts.addKey(key, 1)
	}
	return nil
}
