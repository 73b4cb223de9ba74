package instacart

import (
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// A lease of creds/<role> carries, in its internal data, what renewing and
// revoking it need: credsResponse writes it, parseLease reads it back.

// credsResponse builds the leased secret for a token.
func (b *backend) credsResponse(m *mintRequest, t *issuedToken, warnings []string) (*logical.Response, error) {
	roleName, r := m.roleName, m.role
	remaining := t.ExpiresAt.Sub(b.now()).Truncate(time.Second)
	if remaining <= 0 {
		return nil, errTooShortToLease
	}
	scopes := t.Scopes
	if len(scopes) == 0 {
		scopes = nonNil(r.Scopes) // Connect may omit "scope"; it granted what we asked for
	}
	data := map[string]any{
		"access_token": t.AccessToken,
		"token_type":   t.TokenType,
		"scopes":       scopes,
		"expires_at":   t.ExpiresAt.Format(time.RFC3339),
		"created_at":   t.CreatedAt.Format(time.RFC3339),
	}
	// The lease keeps what renew (role, expiry, which token) and revoke need.
	// Only exclusive tokens are revoked upstream, so only their leases carry
	// the token and the credentials that minted it (stored encrypted by
	// Vault). A shared lease carries a short hash of its token and its user
	// id, which renewal needs to find the token its role serves now and
	// compare (renewal.go); keeping shared leases small keeps Vault's lease
	// writes cheap on the hot path.
	internal := map[string]any{
		"role":       roleName,
		"expires_at": t.ExpiresAt.Format(time.RFC3339Nano),
	}
	if t.UserID != "" {
		data["user_id"] = t.UserID
		internal["user_id"] = t.UserID // its key (shared), its queue entry (exclusive)
	}
	if r.shared() {
		internal["token_hash"] = tokenHash(t.AccessToken)
	} else {
		internal["token_reuse"] = r.TokenReuse
		internal["credentials_id"] = t.CredentialsID
		internal["access_token"] = t.AccessToken
	}

	resp := b.Secret(secretTypeToken).Response(data, internal)
	ttl, maxTTL, capWarnings := leaseTTL(remaining, r)
	resp.Secret.TTL, resp.Secret.MaxTTL = ttl, maxTTL
	resp.Warnings = append(warnings, capWarnings...)
	if w := b.credsRenewByWarning(); w != "" {
		resp.Warnings = append(resp.Warnings, w)
	}
	return resp, nil
}

// leaseTTL caps a lease of a token with remaining life by the role's max_ttl
// and ttl, with one warning per cap that shortened it (as Vault's own engines
// word it). The mount's max_lease_ttl is applied by Vault itself when it
// registers the lease (framework.CalculateTTL, with its own warning); asking
// for it here would cost a round trip to Vault on every read.
func leaseTTL(remaining time.Duration, r *role) (ttl, maxTTL time.Duration, warnings []string) {
	ttl, maxTTL = remaining, remaining
	if r.MaxTTL > 0 && r.MaxTTL < maxTTL {
		warnings = append(warnings, fmt.Sprintf("the token's remaining lifetime of %s is greater than the role's max_ttl of %s; capping accordingly", maxTTL, r.MaxTTL))
		maxTTL = r.MaxTTL
	}
	if r.TTL > 0 && r.TTL < min(ttl, maxTTL) {
		warnings = append(warnings, fmt.Sprintf("the token's remaining lifetime of %s is greater than the role's ttl of %s; capping accordingly", ttl, r.TTL))
		ttl = r.TTL
	}
	return min(ttl, maxTTL), maxTTL, warnings
}

// leaseInfo is what a lease's internal data says about its token. Only an
// exclusive token's lease carries its revocable identity; a shared one's
// names its token by tokenHash (none in leases issued before it did).
type leaseInfo struct {
	role, reuse, userID, tokenHash string
	token                          revocable
}

func parseLease(s *logical.Secret) (leaseInfo, error) {
	str := func(k string) string { v, _ := s.InternalData[k].(string); return v }
	info := leaseInfo{
		role:      str("role"),
		reuse:     str("token_reuse"),
		userID:    str("user_id"),
		tokenHash: str("token_hash"),
		token:     revocable{CredentialsID: str("credentials_id"), AccessToken: str("access_token")},
	}
	exp, err := time.Parse(time.RFC3339Nano, str("expires_at"))
	if err != nil {
		return info, fmt.Errorf("lease has no valid expires_at: %w", err)
	}
	info.token.ExpiresAt = exp
	return info, nil
}
