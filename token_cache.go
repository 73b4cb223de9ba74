package instacart

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

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

// cachedToken is a shared token as stored. Values are immutable once cached.
type cachedToken struct {
	AccessToken   string    `json:"access_token"`
	TokenType     string    `json:"token_type"`
	Scopes        []string  `json:"scopes"`
	UserID        string    `json:"user_id,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	ExpiresAt     time.Time `json:"expires_at"`
	CredentialsID string    `json:"credentials_id"`
	RoleHash      string    `json:"role_hash"`
}

func newCachedToken(t *connect.Token, userID, credentialsID, roleHash string) *cachedToken {
	return &cachedToken{
		AccessToken:   t.AccessToken,
		TokenType:     t.TokenType,
		Scopes:        t.Scopes,
		UserID:        userID,
		CreatedAt:     t.CreatedAt,
		ExpiresAt:     t.ExpiresAt,
		CredentialsID: credentialsID,
		RoleHash:      roleHash,
	}
}

// belongsTo reports whether t was minted with the current credentials for the
// current definition of the role.
func (t *cachedToken) belongsTo(credentialsID, roleHash string) bool {
	return t != nil && t.CredentialsID == credentialsID && t.RoleHash == roleHash
}

// fresh reports whether t may still be handed out without replacement: more
// than minRemaining of life left. minRemaining is capped at half the token's
// lifetime so a short-lived token is not replaced on every read.
func (t *cachedToken) fresh(now time.Time, minRemaining time.Duration) bool {
	if half := t.ExpiresAt.Sub(t.CreatedAt) / 2; minRemaining > half {
		minRemaining = half
	}
	return t.ExpiresAt.Sub(now) > minRemaining
}

// tokenCache keeps shared tokens in memory, in front of storage, and
// coalesces concurrent mints of the same token.
type tokenCache struct {
	entries sync.Map // storage key -> *cachedToken
	flights singleflight.Group
}

func tokenKey(roleName, userID string) string {
	if userID == "" {
		return tokenStoragePrefix + roleName + "/role"
	}
	sum := sha256.Sum256([]byte(userID))
	return tokenStoragePrefix + roleName + "/user-" + hex.EncodeToString(sum[:])
}

func (c *tokenCache) get(key string) *cachedToken {
	if v, ok := c.entries.Load(key); ok {
		return v.(*cachedToken)
	}
	return nil
}

func (c *tokenCache) remember(key string, t *cachedToken) { c.entries.Store(key, t) }

func (c *tokenCache) forget(key string) { c.entries.Delete(key) }

func (c *tokenCache) clear() { c.entries.Clear() }

// load reads a shared token from storage.
func (c *tokenCache) load(ctx context.Context, s logical.Storage, key string) (*cachedToken, error) {
	entry, err := s.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading cached token: %w", err)
	}
	if entry == nil {
		return nil, nil
	}
	t := new(cachedToken)
	if err := entry.DecodeJSON(t); err != nil {
		return nil, fmt.Errorf("decoding cached token: %w", err)
	}
	return t, nil
}

func (c *tokenCache) store(ctx context.Context, s logical.Storage, key string, t *cachedToken) error {
	entry, err := logical.StorageEntryJSON(key, t)
	if err != nil {
		return fmt.Errorf("encoding cached token: %w", err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return fmt.Errorf("writing cached token: %w", err)
	}
	c.remember(key, t)
	return nil
}

// roleKeys lists the storage keys of a role's shared tokens.
func (c *tokenCache) roleKeys(ctx context.Context, s logical.Storage, roleName string) ([]string, error) {
	prefix := tokenStoragePrefix + roleName + "/"
	keys, err := s.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("listing cached tokens of role %q: %w", roleName, err)
	}
	for i, k := range keys {
		keys[i] = prefix + k
	}
	return keys, nil
}

// dropRole deletes every shared token of a role from memory and storage.
func (c *tokenCache) dropRole(ctx context.Context, s logical.Storage, roleName string) error {
	keys, err := c.roleKeys(ctx, s, roleName)
	if err != nil {
		return err
	}
	for _, k := range keys {
		c.forget(k)
		if err := s.Delete(ctx, k); err != nil {
			return fmt.Errorf("deleting cached token: %w", err)
		}
	}
	return nil
}

// sharedToken returns the role's shared token for userID, minting one when
// none is cached or the cached one is too close to expiry. Concurrent callers
// that need a new token share one Connect request.
func (b *backend) sharedToken(ctx context.Context, s logical.Storage, roleName string, r *role, e *engine, userID string) (*cachedToken, []string, error) {
	key := tokenKey(roleName, userID)
	if t := b.tokens.get(key); t.belongsTo(e.config.CredentialsID, r.hash) && t.fresh(b.now(), r.MinRemainingTTL) {
		return t, nil, nil
	}

	type result struct {
		token    *cachedToken
		warnings []string
	}
	// The flight key includes the credentials and role versions so a mint for
	// a superseded config or role is never shared with callers of the new one.
	flight := key + "\x00" + e.config.CredentialsID + "\x00" + r.hash
	ch := b.tokens.flights.DoChan(flight, func() (any, error) {
		// The mint must not die with the request that happened to start it:
		// other callers wait on it too. Each caller still honours its own deadline.
		mintCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), maxMintWait)
		defer cancel()
		t, warnings, err := b.refreshShared(mintCtx, s, key, r, e, userID)
		return result{t, warnings}, err
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, nil, res.Err
		}
		out := res.Val.(result)
		return out.token, out.warnings, nil
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("waiting for a token from Connect: %w", ctx.Err())
	}
}

// refreshShared runs once per flight: it takes a fresh token from storage if
// another node or an earlier process stored one, else mints and stores one.
// When Connect is failing it keeps serving a cached token that has not yet
// expired, with a warning, rather than failing readers.
func (b *backend) refreshShared(ctx context.Context, s logical.Storage, key string, r *role, e *engine, userID string) (*cachedToken, []string, error) {
	credsID := e.config.CredentialsID
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
		b.tokens.remember(key, candidate)
		return candidate, nil, nil
	}

	tok, err := b.mint(ctx, e, tokenRequest(r, userID, ""))
	if err != nil {
		if candidate != nil && candidate.ExpiresAt.After(now) && connect.IsTemporary(err) {
			b.Logger().Warn("Connect is failing; serving the cached token until it expires", "key", key, "expires_at", candidate.ExpiresAt, "error", err)
			return candidate, []string{fmt.Sprintf("Instacart Connect could not mint a replacement token (%v); this cached token expires at %s", err, candidate.ExpiresAt.Format(time.RFC3339))}, nil
		}
		return nil, nil, err
	}
	t := newCachedToken(tok, userID, credsID, r.hash)
	if err := b.tokens.store(ctx, s, key, t); err != nil {
		// The token is good; without storage it is only shared by this process.
		b.Logger().Warn("could not persist a shared token; keeping it in memory only", "key", key, "error", err)
		b.tokens.remember(key, t)
	}
	return t, nil, nil
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
