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
		// Vault retries the lease a few times, then gives up on it: the
		// engine keeps trying the token it holds in hand meanwhile.
		return nil, logical.CodedError(http.StatusServiceUnavailable, fmt.Sprintf("the token could not be revoked nor queued for revocation; Vault retries the lease: %v", err))
	}
	return nil, nil
}
