package instacart

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// A renewal is how a cache (Vault Proxy's lease cache, Vault Agent's
// templates, tokensource) asks whether the token it holds is still good: they
// renew the lease as it nears its end and read creds again once a renewal is
// refused. So a lease is renewed only while its token is what its role serves
// now: the role exists and still shares its token, and the token stored at
// its key (tokenKey) is this one, minted with the current credentials for
// the current definition of the role (mintRequest.serves, the judgement
// reads and the fallback make). A token flushed, queued for revocation or
// revoked, superseded by a newer mint, minted before a rotation or a role
// edit, or of a deleted role is refused, and its holder moves to the token
// the role serves now. Superseded tokens are refused too: the current token
// is the only one the engine vouches for (a flush revokes the old ones), and
// a superseded token is near its end anyway (min_remaining_ttl).
//
// Shared leases name their token by tokenHash (and their user, for per-user
// tokens). Leases issued before they did carry no hash and are renewed as
// before. Memory answers first; storage is read only when memory does not
// show the token served, and nothing is written.

// notServed is the refusal of a shared lease, telling its holder what to do.
func notServed(role, why string) string {
	return fmt.Sprintf("this lease's token is no longer the one role %s hands out (%s) and may have been revoked at Instacart Connect: read creds/%s again for the current token", role, why, role)
}

// refuseRenewal is a refusal as tokenRenew returns it: an error, not an
// error response, since Vault dumps a refused renewal's response with %#v
// into the error its caller (and Proxy's or Agent's log) sees, but shows
// an error as it is. The status is a 400 either way.
func refuseRenewal(refusal string) error {
	return logical.CodedError(http.StatusBadRequest, refusal)
}

// renewable decides whether the lease described by info may be renewed. It
// returns the role as it is now (nil if deleted), for the lease's caps, and
// refusal, a sentence for the holder when it may not; err is storage's.
func (b *backend) renewable(ctx context.Context, s logical.Storage, info leaseInfo) (r *role, refusal string, err error) {
	switch {
	case info.reuse == reuseExclusive:
		return b.exclusiveRenewable(ctx, s, info)
	case info.tokenHash == "":
		// Issued before leases named their token: nothing to compare.
		r, err := b.getRole(ctx, s, info.role)
		return r, "", err
	}
	// As the fallback does: under the role lock (shared), so a flush, role
	// write or delete is wholly before or after the check.
	mu := b.roleLock(info.role)
	mu.RLock()
	defer mu.RUnlock()
	r, err = b.getRoleLocked(ctx, s, info.role)
	switch {
	case err != nil:
		return nil, "", err
	case r == nil:
		return nil, notServed(info.role, "the role was deleted"), nil
	case !r.shared():
		return r, notServed(info.role, "the role no longer shares its token"), nil
	}
	snap, err := b.getSnapshot(ctx, s)
	if err != nil {
		return nil, "", err
	}
	if !snap.config.configured() {
		return r, notServed(info.role, "the engine's credentials were deleted"), nil
	}
	m := mintRequest{roleName: info.role, role: r, userID: info.userID, snap: snap}
	servesLease := func(t *issuedToken) bool {
		return m.serves(t) && tokenHash(t.AccessToken) == info.tokenHash
	}
	if servesLease(b.tokens.get(m.key())) {
		return r, "", nil
	}
	stored, err := b.tokens.load(ctx, s, m.key())
	if err != nil {
		return nil, "", err
	}
	if !servesLease(stored) {
		return r, notServed(info.role, "it was flushed or replaced, or the role or the engine's credentials changed since it was minted"), nil
	}
	return r, "", nil
}

// exclusiveRenewable refuses an exclusive lease whose token waits in the
// revocation queue: it is being revoked (its lease is ending, or a WAL
// rollback found it), so no holder may count on it.
func (b *backend) exclusiveRenewable(ctx context.Context, s logical.Storage, info leaseInfo) (*role, string, error) {
	if info.token.AccessToken != "" {
		queued, err := s.Get(ctx, pendingKey(info.role, info.token.AccessToken))
		if err != nil {
			return nil, "", fmt.Errorf("looking for the lease's token in the revocation queue: %w", err)
		}
		if queued != nil {
			return nil, fmt.Sprintf("this lease's token is being revoked at Instacart Connect: read creds/%s again for a new token", info.role), nil
		}
	}
	r, err := b.getRole(ctx, s, info.role)
	return r, "", err
}

// renewedTTL is the lease's TTL and max TTL after a renewal at now: up to
// the token's expiry, never past it (Connect tokens cannot be refreshed), and
// within the role's ttl and max_ttl (r nil: no caps).
func renewedTTL(info leaseInfo, r *role, issued, now time.Time) (ttl, maxTTL time.Duration) {
	ttl = info.token.ExpiresAt.Sub(now).Truncate(time.Second)
	// Vault caps renewals at IssueTime+MaxTTL, truncating both to whole
	// seconds; a second of margin keeps the lease inside the token's life.
	maxTTL = info.token.ExpiresAt.Sub(issued) - time.Second
	if r != nil {
		if r.TTL > 0 && r.TTL < ttl {
			ttl = r.TTL
		}
		if r.MaxTTL > 0 && r.MaxTTL < maxTTL {
			maxTTL = r.MaxTTL
		}
	}
	// Asking for more than is left before IssueTime+MaxTTL only earns a
	// warning from Vault on every renewal ("TTL exceeded the effective max_ttl").
	if left := issued.Add(maxTTL).Sub(now).Truncate(time.Second); left < ttl {
		ttl = max(left, 0)
	}
	return ttl, maxTTL
}
