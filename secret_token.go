package instacart

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// secretTypeToken is the type of the leases creds/<role> hands out.
const secretTypeToken = "instacart_token"

func secretToken(b *backend) *framework.Secret {
	return &framework.Secret{
		Type: secretTypeToken,
		Fields: map[string]*framework.FieldSchema{
			"access_token": {Type: framework.TypeString, Description: "Bearer token for Instacart Connect."},
			"token_type":   {Type: framework.TypeString, Description: "Always Bearer."},
			"scopes":       {Type: framework.TypeStringSlice, Description: "Scopes the token was granted."},
			"expires_at":   {Type: framework.TypeString, Description: "When the token expires (RFC 3339)."},
			"created_at":   {Type: framework.TypeString, Description: "When Connect minted the token (RFC 3339)."},
			"user_id":      {Type: framework.TypeString, Description: "The Connect user of an assertion token."},
		},
		Renew:  b.tokenRenew,
		Revoke: b.tokenRevoke,
	}
}

// leaseInfo is what a lease's internal data says about its token. Only an
// exclusive token's lease carries its revocable identity.
type leaseInfo struct {
	role, reuse, userID string
	token               revocable
}

func parseLease(s *logical.Secret) (leaseInfo, error) {
	str := func(k string) string { v, _ := s.InternalData[k].(string); return v }
	info := leaseInfo{
		role:   str("role"),
		reuse:  str("token_reuse"),
		userID: str("user_id"),
		token:  revocable{CredentialsID: str("credentials_id"), AccessToken: str("access_token")},
	}
	exp, err := time.Parse(time.RFC3339Nano, str("expires_at"))
	if err != nil {
		return info, fmt.Errorf("lease has no valid expires_at: %w", err)
	}
	info.token.ExpiresAt = exp
	return info, nil
}

// tokenRenew extends a lease up to the token's expiry, never past it: Connect
// tokens cannot be refreshed.
func (b *backend) tokenRenew(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	info, err := parseLease(req.Secret)
	if err != nil {
		return nil, err
	}
	remaining := info.token.ExpiresAt.Sub(b.now()).Truncate(time.Second)
	if remaining <= 0 {
		return logical.ErrorResponse("the token has expired and cannot be renewed; read creds/%s for a new one", info.role), nil
	}
	ttl := remaining
	// Vault caps renewals at IssueTime+MaxTTL, truncating both to whole
	// seconds; a second of margin keeps the lease inside the token's life.
	maxTTL := info.token.ExpiresAt.Sub(req.Secret.IssueTime) - time.Second
	r, err := b.getRole(ctx, req.Storage, info.role)
	if err != nil {
		return nil, err
	}
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
	if left := req.Secret.IssueTime.Add(maxTTL).Sub(b.now()).Truncate(time.Second); left < ttl {
		ttl = max(left, 0)
	}
	resp := &logical.Response{Secret: req.Secret}
	resp.Secret.TTL, resp.Secret.MaxTTL = ttl, maxTTL
	return resp, nil
}

// tokenRevoke revokes an exclusive token where it was minted. Shared tokens
// are left alone (other leases hold them). The token is queued and tried once
// (revokeNow), so an attempt that fails, or outlasts Vault's deadline, leaves
// it to the queue's retries; only a token neither revoked nor queued is an
// error, so Vault retries the lease.
func (b *backend) tokenRevoke(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	info, err := parseLease(req.Secret)
	if err != nil {
		return nil, err
	}
	if info.reuse != reuseExclusive {
		return nil, nil
	}
	tryCtx, cancel := answerBy(ctx) // leave time to answer Vault
	defer cancel()
	p := pendingRevocation{Role: info.role, UserID: info.userID, revocable: info.token}
	if _, err := b.revokeNow(ctx, tryCtx, req.Storage, p, "its lease was revoked"); err != nil {
		return nil, logical.CodedError(http.StatusServiceUnavailable, fmt.Sprintf("the token could not be revoked nor queued for revocation; Vault retries the lease: %v", err))
	}
	return nil, nil
}
