package instacart

import (
	"context"
	"fmt"
	"hash/fnv"
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
// in front of storage, and coalesces concurrent mints of the same token.
//
// Every forget bumps the generation of its key's stripe. A token read from
// (or written to) storage is only remembered if no forget hit its stripe since
// the storage call began, so a flush or invalidation that lands in between is
// never undone by putting a just-revoked token back into memory. Stripes keep
// busy forgetting of other keys (tidy, another node's mints) from getting in
// the way.
type tokenCache struct {
	mu   sync.Mutex // guards gens, and orders remembering against forgetting
	gens [genStripes]uint64
	// writes counts, per stripe, the stores this process made (see version).
	writes  [genStripes]uint64
	entries *lru.Cache[string, *issuedToken] // storage key -> token
	flights singleflight.Group
	// keyLocks serialise publishing to one key (striped like gens).
	keyLocks [genStripes]sync.Mutex
	// view proves keys absent from storage without reading them (absence.go).
	view *keyView
}

// genStripes is how many generations the keys are spread over.
const genStripes = 256

func genStripe(key string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % genStripes)
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

// generation is read before a storage call whose result for key may be
// remembered.
func (c *tokenCache) generation(key string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gens[genStripe(key)]
}

// stripeVersion is what had happened to a stripe's keys in this process
// (forgets, stores) when a storage read of one of them began.
type stripeVersion struct{ gen, writes uint64 }

// version is key's stripe's version now: a storage read of key begun after
// it still stands, in this process, while the version is unchanged.
func (c *tokenCache) version(key string) stripeVersion {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := genStripe(key)
	return stripeVersion{c.gens[i], c.writes[i]}
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

// lockKey holds key's publish lock until the returned func is called.
func (c *tokenCache) lockKey(key string) (unlock func()) {
	mu := &c.keyLocks[genStripe(key)]
	mu.Lock()
	return mu.Unlock
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
	c.mu.Lock()
	c.writes[genStripe(key)]++ // even a failed put may have landed
	c.mu.Unlock()
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
