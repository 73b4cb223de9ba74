package instacart

import (
	"context"
	"fmt"
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

// leaseInfo is what a lease's internal data says about its token.
type leaseInfo struct {
	role, reuse, credentialsID, accessToken string
	expiresAt                               time.Time
}

func parseLease(s *logical.Secret) (leaseInfo, error) {
	str := func(k string) string { v, _ := s.InternalData[k].(string); return v }
	info := leaseInfo{
		role:          str("role"),
		reuse:         str("token_reuse"),
		credentialsID: str("credentials_id"),
		accessToken:   str("access_token"),
	}
	exp, err := time.Parse(time.RFC3339Nano, str("expires_at"))
	if err != nil {
		return info, fmt.Errorf("lease has no valid expires_at: %w", err)
	}
	info.expiresAt = exp
	return info, nil
}

// tokenRenew extends a lease up to the token's expiry, never past it: Connect
// tokens cannot be refreshed.
func (b *backend) tokenRenew(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	info, err := parseLease(req.Secret)
	if err != nil {
		return nil, err
	}
	remaining := info.expiresAt.Sub(b.now()).Truncate(time.Second)
	if remaining <= 0 {
		return logical.ErrorResponse("the token has expired and cannot be renewed; read creds/%s for a new one", info.role), nil
	}
	ttl := remaining
	// Vault caps renewals at IssueTime+MaxTTL, truncating both to whole
	// seconds; a second of margin keeps the lease inside the token's life.
	maxTTL := info.expiresAt.Sub(req.Secret.IssueTime) - time.Second
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
	resp := &logical.Response{Secret: req.Secret}
	resp.Secret.TTL, resp.Secret.MaxTTL = ttl, maxTTL
	return resp, nil
}

// tokenRevoke revokes an exclusive token at Connect with the credentials that
// minted it. Shared tokens are left alone (other leases hold them). A token
// that has expired needs no call; Connect answers 200 for unknown or already
// revoked tokens. Only transient failures are returned, so Vault retries them;
// a permanent refusal is logged, since retrying could never succeed and would
// strand the lease.
func (b *backend) tokenRevoke(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	info, err := parseLease(req.Secret)
	if err != nil {
		return nil, err
	}
	now := b.now()
	if info.reuse != reuseExclusive || info.accessToken == "" || !now.Before(info.expiresAt) {
		return nil, nil
	}
	e, err := b.getEngine(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	logger := b.Logger().With("role", info.role, "expires_at", info.expiresAt)
	if e.config == nil {
		logger.Warn("config was deleted: cannot revoke the token upstream; it expires by itself")
		return nil, nil
	}
	creds, baseURL, ok := e.config.credentialsFor(info.credentialsID, now)
	if !ok {
		logger.Warn("the credentials that minted this token are no longer known: cannot revoke it upstream; it expires by itself")
		return nil, nil
	}
	client := e.client
	if baseURL != client.BaseURL() {
		// Minted at another Connect host before a config change.
		cfg := *e.config
		cfg.BaseURL = baseURL
		if client, err = cfg.newClient(b.Logger().Named("connect")); err != nil {
			return nil, err
		}
		defer client.Close()
	}
	if err := client.Revoke(ctx, creds, info.accessToken); err != nil {
		if resp, rerr := upstreamError(err); rerr != nil {
			return nil, fmt.Errorf("revoking token at Connect (Vault will retry): %w", err)
		} else if resp != nil {
			logger.Warn("Connect refused to revoke the token; it expires by itself", "error", err)
		}
	}
	return nil, nil
}
