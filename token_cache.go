package instacart

import (
	"context"
	"fmt"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/sync/singleflight"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// maxMintWait bounds a coalesced mint that outlives the request that started it.
const maxMintWait = 2 * time.Minute

// minLeasable is the least life a token must have left to be leased: Vault
// leases whole seconds, so a token with less cannot be handed out.
const minLeasable = time.Second

// issuedToken is a token Connect issued: a shared one as stored and cached,
// or an exclusive one on its way to its lease. Values are immutable once cached.
type issuedToken struct {
	revocable
	TokenType string   `json:"token_type"`
	Scopes    []string `json:"scopes"`
	UserID    string   `json:"user_id,omitempty"`
	// CreatedAt is what Connect reported, for information: a server that
	// reuses tokens reports the original creation time.
	CreatedAt time.Time `json:"created_at"`
	// RequestedAt is when the request that minted it was sent; ExpiresAt
	// counts from it.
	RequestedAt time.Time `json:"requested_at,omitzero"`
	RoleHash    string    `json:"role_hash"`
}

func newIssuedToken(t *connect.Token, userID, credentialsID, roleHash string) *issuedToken {
	return &issuedToken{
		revocable:   revocableToken(credentialsID, t),
		TokenType:   t.TokenType,
		Scopes:      t.Scopes,
		UserID:      userID,
		CreatedAt:   t.CreatedAt,
		RequestedAt: t.RequestedAt,
		RoleHash:    roleHash,
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

// tokenCacheSize bounds the shared tokens held in memory. Storage stays the
// source of truth: a token evicted here costs one storage read, never a mint,
// while it is fresh. Per-user tokens are what can grow (one per shopper).
const tokenCacheSize = 10_000

// tokenCache keeps shared tokens in memory (least recently used go first),
// in front of storage. What keeps memory true to storage is in stripeVersions;
// how concurrent mints and stores of one key are coordinated, in
// publishCoordination (shared_token.go uses both).
type tokenCache struct {
	entries *lru.Cache[string, *issuedToken] // storage key -> token
	stripeVersions
	publishCoordination
	// view proves keys absent from storage without reading them (absence.go).
	view *keyView
}

func newTokenCache(size int) *tokenCache {
	entries, err := lru.New[string, *issuedToken](size)
	if err != nil {
		panic(fmt.Sprintf("token cache of size %d: %v", size, err)) // only for a size <= 0
	}
	return &tokenCache{entries: entries, view: newKeyView()}
}

func (c *tokenCache) get(key string) *issuedToken {
	t, _ := c.entries.Get(key)
	return t
}

// rememberIf keeps t in memory unless something under key's stripe was
// forgotten since gen.
func (c *tokenCache) rememberIf(key string, t *issuedToken, gen uint64) {
	c.ifUnchanged(key, gen, func() { c.entries.Add(key, t) })
}

func (c *tokenCache) forget(key string) {
	c.bump(key, func() { c.entries.Remove(key) })
}

func (c *tokenCache) clear() {
	c.bumpAll(c.entries.Purge)
}

// memoryKeys lists the keys of role's tokens held in memory.
func (c *tokenCache) memoryKeys(role string) []string {
	var keys []string
	for _, key := range c.entries.Keys() {
		if tokenRole(key) == role {
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
	c.view.note(key) // before the write: from here on key may be stored
	err := putJSON(ctx, s, key, t)
	c.wrote(key) // even a failed put may have landed
	if err != nil {
		return err
	}
	c.rememberIf(key, t, gen)
	return nil
}

// forgetExpired drops expired tokens from memory.
func (c *tokenCache) forgetExpired(now time.Time) {
	for _, key := range c.entries.Keys() {
		if t, ok := c.entries.Peek(key); ok && !now.Before(t.ExpiresAt) {
			c.forget(key)
		}
	}
}

// stripeVersions orders remembering a token read from (or written to)
// storage against forgetting it. Every forget bumps the generation of its
// key's stripe, and a token is only remembered if no forget hit its stripe
// since the storage call began, so a flush or invalidation that lands in
// between is never undone by putting a just-revoked token back into memory.
// Stripes keep busy forgetting of other keys (tidy, another node's mints)
// from getting in the way.
type stripeVersions struct {
	mu   sync.Mutex // guards gens and writes
	gens [genStripes]uint64
	// writes counts, per stripe, the stores this process made (see version).
	writes [genStripes]uint64
}

// genStripes is how many generations the keys are spread over.
const genStripes = 256

func genStripe(key string) int { return stripeOf(key, genStripes) }

// generation is read before a storage call whose result for key may be
// remembered.
func (v *stripeVersions) generation(key string) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.gens[genStripe(key)]
}

// stripeVersion is what had happened to a stripe's keys in this process
// (forgets, stores) when a storage read of one of them began.
type stripeVersion struct{ gen, writes uint64 }

// version is key's stripe's version now: a storage read of key begun after
// it still stands, in this process, while the version is unchanged.
func (v *stripeVersions) version(key string) stripeVersion {
	v.mu.Lock()
	defer v.mu.Unlock()
	i := genStripe(key)
	return stripeVersion{v.gens[i], v.writes[i]}
}

// wrote counts a store to key.
func (v *stripeVersions) wrote(key string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.writes[genStripe(key)]++
}

// ifUnchanged runs remember only while key's stripe is still at gen, as one
// step against forgets.
func (v *stripeVersions) ifUnchanged(key string, gen uint64, remember func()) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.gens[genStripe(key)] == gen {
		remember()
	}
}

// bump starts a new generation of key's stripe and runs forget, as one step.
func (v *stripeVersions) bump(key string, forget func()) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.gens[genStripe(key)]++
	forget()
}

// bumpAll starts a new generation of every stripe and runs forget, as one step.
func (v *stripeVersions) bumpAll(forget func()) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for i := range v.gens {
		v.gens[i]++
	}
	forget()
}

// publishCoordination keeps concurrent work on one shared token together:
// the mints of one key coalesce into one flight, and the stores to one key
// (a publish, a move of a legacy key, tidy's removals) take its publish lock.
type publishCoordination struct {
	flights singleflight.Group
	// keyLocks serialise publishing to one key (striped like the generations).
	keyLocks [genStripes]sync.Mutex
}

// lockKey holds key's publish lock until the returned func is called.
func (p *publishCoordination) lockKey(key string) (unlock func()) {
	mu := &p.keyLocks[genStripe(key)]
	mu.Lock()
	return mu.Unlock
}
