package instacart

import (
	"context"

	"github.com/hashicorp/vault/sdk/logical"
)

// The previous release (v0.1.0) kept per-user tokens at
// tokens/<role>/user-<hash> (token_keys.go has today's layout). Nothing is
// migrated in one blocking pass: a read that finds its user's token there
// moves it, and tidy moves the rest in the background, shard by shard of
// the new layout. Until a whole tidy pass has run, a read that finds no token
// at its key looks at the old one.

// legacyOutcome is what became of a token at a previous release's key.
type legacyOutcome int

const (
	legacyAbsent  legacyOutcome = iota // nothing was there
	legacyMoved                        // moved to its key, or kept beside a newer token there
	legacyExpired                      // dropped: it had expired
)

// moveLegacyToken moves the token at legacyKey to its key in today's layout,
// unless a newer token is live there (then it is kept beside it, out of
// service, for its leases) or it has expired (then it is dropped). live is
// the token now at the new key.
func (b *backend) moveLegacyToken(ctx context.Context, s logical.Storage, role, legacyKey string) (live *issuedToken, outcome legacyOutcome, err error) {
	newKey, ok := migratedKey(legacyKey)
	if !ok {
		return nil, legacyAbsent, nil
	}
	// The locks publishShared takes, in its order: no token published at
	// the new key meanwhile is overwritten.
	mu := b.roleLock(role)
	mu.RLock()
	defer mu.RUnlock()
	unlock := b.tokens.lockKey(newKey)
	defer unlock()
	old, err := b.tokens.load(ctx, s, legacyKey)
	if err != nil {
		return nil, legacyAbsent, err
	}
	live, err = b.tokens.load(ctx, s, newKey)
	if err != nil || old == nil {
		return live, legacyAbsent, err
	}
	outcome = legacyMoved
	switch {
	case old.expired(b.now()):
		outcome = legacyExpired
	case live == nil:
		if err := b.tokens.store(ctx, s, newKey, old); err != nil {
			return nil, legacyAbsent, err
		}
		b.counts.addKey(newKey, 1)
		live = old
	case live.AccessToken != old.AccessToken:
		if err := putJSON(ctx, s, supersededKey(newKey, old.AccessToken), old); err != nil {
			return nil, legacyAbsent, err
		}
		b.counts.addKey(newKey, 1)
	}
	b.tokens.forget(legacyKey)
	if err := s.Delete(ctx, legacyKey); err != nil {
		return nil, legacyAbsent, storageError("deleting a moved token", err)
	}
	b.counts.addKey(legacyKey, -1)
	return live, outcome, nil
}

// loadUserToken reads the token stored for m's user, moving it from the
// previous release's key first if it is still there.
func (b *backend) loadUserToken(ctx context.Context, s logical.Storage, m *mintRequest) (*issuedToken, error) {
	t, err := b.tokens.load(ctx, s, m.key())
	if err != nil || t != nil || m.userID == "" || !b.legacyUserKeys.Load() {
		return t, err
	}
	t, _, err = b.moveLegacyToken(ctx, s, m.roleName, legacyUserKey(m.roleName, m.userID))
	return t, err
}
