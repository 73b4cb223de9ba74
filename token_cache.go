package instacart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/sync/singleflight"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// tokenStoragePrefix holds shared tokens: tokens/<role>/<key>, where key is
// "role" for role-wide tokens or "user-<sha256 of the user id>" for assertion
// tokens (user ids may hold any character; storage keys may not).
const tokenStoragePrefix = "tokens/"

// maxMintWait bounds a coalesced mint that outlives the request that started it.
const maxMintWait = 2 * time.Minute

// minLeasable is the least life a token must have left to be leased: Vault
// leases whole seconds, so a token with less cannot be handed out.
const minLeasable = time.Second

// issuedToken is a token Connect issued: a shared one as stored and cached,
// or an exclusive one on its way to its lease. Values are immutable once cached.
type issuedToken struct {
	AccessToken string   `json:"access_token"`
	TokenType   string   `json:"token_type"`
	Scopes      []string `json:"scopes"`
	UserID      string   `json:"user_id,omitempty"`
	// CreatedAt is what Connect reported, for information: a server that
	// reuses tokens reports the original creation time.
	CreatedAt time.Time `json:"created_at"`
	// RequestedAt is when the request that minted it was sent; ExpiresAt
	// counts from it.
	RequestedAt   time.Time `json:"requested_at,omitzero"`
	ExpiresAt     time.Time `json:"expires_at"`
	CredentialsID string    `json:"credentials_id"`
	RoleHash      string    `json:"role_hash"`
}

func newIssuedToken(t *connect.Token, userID, credentialsID, roleHash string) *issuedToken {
	return &issuedToken{
		AccessToken:   t.AccessToken,
		TokenType:     t.TokenType,
		Scopes:        t.Scopes,
		UserID:        userID,
		CreatedAt:     t.CreatedAt,
		RequestedAt:   t.RequestedAt,
		ExpiresAt:     t.ExpiresAt,
		CredentialsID: credentialsID,
		RoleHash:      roleHash,
	}
}

// belongsTo reports whether t was minted with the current credentials for the
// current definition of the role.
func (t *issuedToken) belongsTo(credentialsID, roleHash string) bool {
	return t != nil && t.CredentialsID == credentialsID && t.RoleHash == roleHash
}

// leasable reports whether t has enough life left to be leased.
func (t *issuedToken) leasable(now time.Time) bool {
	return t.ExpiresAt.Sub(now) >= minLeasable
}

// fresh reports whether t may still be handed out without replacement: more
// than minRemaining of life left (and always enough to lease). minRemaining is
// capped at half the token's lifetime so a short-lived token is not replaced
// on every read.
func (t *issuedToken) fresh(now time.Time, minRemaining time.Duration) bool {
	issued := t.RequestedAt
	if issued.IsZero() { // stored before requested_at was recorded
		issued = t.CreatedAt
	}
	if half := t.ExpiresAt.Sub(issued) / 2; minRemaining > half {
		minRemaining = half
	}
	return t.ExpiresAt.Sub(now) > max(minRemaining, minLeasable)
}

// describe names a token in messages without revealing it: its user, or
// that it is the role-wide one.
func (t *issuedToken) describe() string {
	if t.UserID != "" {
		return fmt.Sprintf("the token of user %q", truncateForMessage(t.UserID))
	}
	return "the role-wide token"
}

// tokenCacheSize bounds the shared tokens held in memory. Storage stays the
// source of truth: a token evicted here costs one storage read, never a mint,
// while it is fresh. Per-user tokens are what can grow (one per shopper).
const tokenCacheSize = 10_000

// tokenCache keeps shared tokens in memory (least recently used go first),
// in front of storage, and coalesces concurrent mints of the same token.
//
// Every forget bumps the generation of its key's stripe. A token read from
// (or written to) storage is only remembered if no forget hit its stripe since
// the storage call began, so a flush or invalidation that lands in between is
// never undone by putting a just-revoked token back into memory. Stripes keep
// busy forgetting of other keys (tidy, another node's mints) from getting in
// the way.
type tokenCache struct {
	mu      sync.Mutex // guards gens, and orders remembering against forgetting
	gens    [genStripes]uint64
	entries *lru.Cache[string, *issuedToken] // storage key -> token
	flights singleflight.Group
}

// genStripes is how many generations the keys are spread over.
const genStripes = 256

func genStripe(key string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % genStripes)
}

func roleTokenPrefix(roleName string) string { return tokenStoragePrefix + roleName + "/" }

func tokenKey(roleName, userID string) string {
	if userID == "" {
		return roleTokenPrefix(roleName) + "role"
	}
	sum := sha256.Sum256([]byte(userID))
	return roleTokenPrefix(roleName) + "user-" + hex.EncodeToString(sum[:])
}

func newTokenCache(size int) *tokenCache {
	entries, err := lru.New[string, *issuedToken](size)
	if err != nil {
		panic(fmt.Sprintf("token cache of size %d: %v", size, err)) // only for a size <= 0
	}
	return &tokenCache{entries: entries}
}

func (c *tokenCache) get(key string) *issuedToken {
	t, _ := c.entries.Get(key)
	return t
}

// generation is read before a storage call whose result for key may be
// remembered.
func (c *tokenCache) generation(key string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gens[genStripe(key)]
}

// rememberIf keeps t in memory unless something under key's stripe was
// forgotten since gen.
func (c *tokenCache) rememberIf(key string, t *issuedToken, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gens[genStripe(key)] == gen {
		c.entries.Add(key, t)
	}
}

func (c *tokenCache) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gens[genStripe(key)]++
	c.entries.Remove(key)
}

func (c *tokenCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.gens {
		c.gens[i]++
	}
	c.entries.Purge()
}

// memoryKeys lists the keys held in memory under prefix.
func (c *tokenCache) memoryKeys(prefix string) []string {
	var keys []string
	for _, key := range c.entries.Keys() {
		if strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
	}
	return keys
}

// load reads a shared token from storage.
func (c *tokenCache) load(ctx context.Context, s logical.Storage, key string) (*issuedToken, error) {
	return getJSON[issuedToken](ctx, s, key)
}

// store writes a shared token to storage, then to memory.
func (c *tokenCache) store(ctx context.Context, s logical.Storage, key string, t *issuedToken) error {
	gen := c.generation(key)
	if err := putJSON(ctx, s, key, t); err != nil {
		return err
	}
	c.rememberIf(key, t, gen)
	return nil
}

// roleKeys lists the storage keys of a role's shared tokens.
func (c *tokenCache) roleKeys(ctx context.Context, s logical.Storage, roleName string) ([]string, error) {
	prefix := roleTokenPrefix(roleName)
	keys, err := s.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("listing cached tokens of role %q: %w", roleName, err)
	}
	for i, k := range keys {
		keys[i] = prefix + k
	}
	return keys, nil
}

// forgetExpired drops expired tokens from memory.
func (c *tokenCache) forgetExpired(now time.Time) {
	for _, key := range c.entries.Keys() {
		if t, ok := c.entries.Peek(key); ok && !now.Before(t.ExpiresAt) {
			c.forget(key)
		}
	}
}

// errRoleChanged: the role was deleted or redefined while a token was being
// minted for it; the token is revoked rather than stored under it.
var errRoleChanged = logical.CodedError(http.StatusConflict, "the role was deleted or changed while its token was being minted; the token was discarded, read again")

// errTooShortToLease: Connect answered with a token that has less than a
// second to live.
var errTooShortToLease = logical.CodedError(http.StatusBadGateway, "Instacart Connect issued a token that expires in under a second; it was revoked, try again")

// sharedToken returns the role's shared token for userID, minting one when
// none is cached or the cached one is too close to expiry. Concurrent callers
// that need a new token share one Connect request.
func (b *backend) sharedToken(ctx context.Context, s logical.Storage, roleName string, r *role, e *configSnapshot, userID string) (*issuedToken, []string, error) {
	key := tokenKey(roleName, userID)
	if t := b.tokens.get(key); t.belongsTo(e.config.CredentialsID, r.hash) && t.fresh(b.now(), r.MinRemainingTTL) {
		b.metrics.read(roleName, sourceMemory)
		return t, nil, nil
	}

	type result struct {
		token    *issuedToken
		warnings []string
		source   readSource // for metrics: where every caller's token came from
	}
	// The flight key includes the credentials and role versions so a mint for
	// a superseded config or role is never shared with callers of the new one.
	flight := key + "\x00" + e.config.CredentialsID + "\x00" + r.hash
	for {
		ch := b.tokens.flights.DoChan(flight, func() (any, error) {
			// The mint must not die with the request that happened to start
			// it: other callers wait on it too. Each caller still honours its
			// own deadline.
			mintCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), maxMintWait)
			defer cancel()
			mintCtx, tag := b.metrics.mintContext(mintCtx, roleName, r, userID)
			t, warnings, err := b.refreshShared(ctx, mintCtx, s, roleName, key, r, e, userID)
			return result{t, warnings, tag.source()}, err
		})
		if b.onSharedWait != nil {
			b.onSharedWait()
		}
		select {
		case res := <-ch:
			if errors.Is(res.Err, errMintQueue) && ctx.Err() == nil {
				continue // the reader that started the flight left while queued; this one has time
			}
			if res.Err != nil {
				return nil, nil, res.Err
			}
			out := res.Val.(result)
			b.metrics.read(roleName, out.source)
			return out.token, out.warnings, nil
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("waiting for a token from Connect: %w", ctx.Err())
		}
	}
}

// refreshShared runs once per flight: it takes a fresh token from storage if
// another node or an earlier process stored one, else mints and stores one.
// When Connect is failing it keeps serving a cached token that has not yet
// expired, with a warning, rather than failing readers.
//
// slotCtx is the context of the caller that started the flight: a mint slot
// is waited for within its deadline, so a reader that leaves while queued
// sends nothing (sharedToken tries again for readers that still have time).
func (b *backend) refreshShared(slotCtx, ctx context.Context, s logical.Storage, roleName, key string, r *role, e *configSnapshot, userID string) (*issuedToken, []string, error) {
	credsID := e.config.CredentialsID
	gen := b.tokens.generation(key)
	candidate := b.tokens.get(key)
	if !candidate.belongsTo(credsID, r.hash) {
		stored, err := b.tokens.load(ctx, s, key)
		if err != nil {
			return nil, nil, err
		}
		candidate = nil
		if stored.belongsTo(credsID, r.hash) {
			candidate = stored
		}
	}
	now := b.now()
	if candidate != nil && candidate.fresh(now, r.MinRemainingTTL) {
		b.tokens.rememberIf(key, candidate, gen)
		return candidate, nil, nil
	}

	// A performance standby or secondary cannot store what it mints: let
	// Vault forward the request to the node that can, before minting.
	if !b.WriteSafeReplicationState() {
		return nil, nil, logical.ErrReadOnly
	}
	release, err := b.acquireMintSlot(slotCtx, e)
	if err != nil {
		return nil, nil, err
	}
	tok, err := b.mintInSlot(ctx, s, e, tokenRequest(r, userID, ""))
	release()
	if err != nil {
		if candidate != nil && candidate.leasable(now) && connect.IsTemporary(err) {
			b.Logger().Warn("Connect is failing; serving the cached token until it expires", "role", roleName, "expires_at", candidate.ExpiresAt, "error", errorSummary(err))
			return candidate, []string{fmt.Sprintf("Instacart Connect could not mint a replacement token (%s); this cached token expires at %s", errorSummary(err), candidate.ExpiresAt.Format(time.RFC3339))}, nil
		}
		return nil, nil, err
	}
	t := newIssuedToken(tok, userID, credsID, r.hash)
	if !t.leasable(b.now()) {
		b.discardToken(ctx, s, roleName, credsID, tok, "too short-lived to lease")
		return nil, nil, errTooShortToLease
	}
	if err := b.publishShared(ctx, s, roleName, key, r, t); err != nil {
		// Nobody else can see or flush a token that was not stored.
		b.discardToken(ctx, s, roleName, credsID, tok, "could not be stored")
		return nil, nil, err
	}
	return t, nil, nil
}

// publishShared stores a newly minted shared token, unless its role was
// deleted or redefined while the token was minted. Holding the role lock
// shared keeps role writes and deletes (which drop a role's tokens) from
// interleaving with the check and the store.
func (b *backend) publishShared(ctx context.Context, s logical.Storage, roleName, key string, r *role, t *issuedToken) error {
	mu := b.roleLock(roleName)
	mu.RLock()
	defer mu.RUnlock()
	current, err := b.getRoleLocked(ctx, s, roleName)
	if err != nil {
		return err
	}
	if current == nil || current.hash != r.hash {
		return errRoleChanged
	}
	return b.tokens.store(ctx, s, key, t)
}

// tokenRequest builds the Connect request for a role.
func tokenRequest(r *role, userID, code string) connect.TokenRequest {
	return connect.TokenRequest{
		GrantType:   r.GrantType,
		Scopes:      r.Scopes,
		UserID:      userID,
		Code:        code,
		RedirectURI: r.RedirectURI,
	}
}
