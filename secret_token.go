package instacart

import (
	"context"
	"errors"
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

// tokenRenew extends a lease up to the token's expiry, while its token is
// still good (renewal.go has the judgement); a refusal tells the holder to
// read creds again.
func (b *backend) tokenRenew(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	info, err := parseLease(req.Secret)
	if err != nil {
		return nil, err
	}
	if info.token.ExpiresAt.Sub(b.now()).Truncate(time.Second) <= 0 {
		return nil, refuseRenewal(fmt.Sprintf("the token has expired and cannot be renewed; read creds/%s for a new one", info.role))
	}
	r, refusal, err := b.renewable(ctx, req.Storage, info)
	if err != nil {
		return nil, renewError(err)
	}
	if refusal != "" {
		return nil, refuseRenewal(refusal)
	}
	resp := &logical.Response{Secret: req.Secret}
	resp.Secret.TTL, resp.Secret.MaxTTL = renewedTTL(info, r, req.Secret.IssueTime, b.now())
	return resp, nil
}

// tokenRevoke revokes an exclusive token where it was minted. Shared tokens
// are left alone (other leases hold them). The token is queued first, so an
// attempt that fails, or outlasts Vault's deadline, leaves it to the queue's
// retries; only a failure to queue it is returned, so Vault retries the
// lease. A permanent refusal is logged, since retrying could never succeed.
func (b *backend) tokenRevoke(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	info, err := parseLease(req.Secret)
	if err != nil {
		return nil, err
	}
	if info.reuse != reuseExclusive {
		return nil, nil
	}
	if info.token.expired(b.now()) {
		b.metrics.revocation(revocationSkippedExpired) // nothing to send, nothing to queue
		return nil, nil
	}
	if err := b.queueRevocation(ctx, req.Storage, info.role, info.userID, info.token); err != nil {
		return nil, fmt.Errorf("queueing the token for revocation (Vault will retry): %w", err)
	}
	tryCtx, cancel := answerBy(ctx) // leave time to answer Vault
	defer cancel()
	permanent, err := b.revokeUpstream(tryCtx, req.Storage, info.role, info.token)
	switch {
	case err == nil:
	case errors.Is(err, errCredentialsGone):
		// Retention is meant to outlast every token: this should not happen.
		b.Logger().Error("the credentials that minted a live token are gone: cannot revoke it upstream; it expires by itself", "role", info.role, "expires_at", info.token.ExpiresAt)
	case permanent:
		b.Logger().Warn("cannot revoke the token upstream; it expires by itself", "role", info.role, "expires_at", info.token.ExpiresAt, "error", err)
	default:
		b.Logger().Warn("could not revoke an exclusive token for now; it is queued and retried every minute", "role", info.role, "error", err)
		return nil, nil
	}
	b.dequeue(context.WithoutCancel(ctx), req.Storage, info.role, info.token.AccessToken)
	return nil, nil
}
