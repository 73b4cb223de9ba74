package instacart

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/go-secure-stdlib/strutil"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// maxCodeLength bounds an authorization code; Instacart's are short random strings.
const maxCodeLength = 1024

func pathCreds(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "creds/" + anyRoleName("name"),
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefixInstacart,
			OperationSuffix: "credentials",
		},
		Fields: map[string]*framework.FieldSchema{
			"name": roleNameField,
			"user_id": {
				Type:         framework.TypeString,
				Description:  "fulfillment_user_assertion roles with allowed_user_ids: the Connect user id to mint a token for.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "User ID"},
			},
			"code": {
				Type:         framework.TypeString,
				Description:  "authorization_code roles: the single-use authorization code from Instacart.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "Authorization code", Sensitive: true},
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathCredsRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read"},
			},
			logical.UpdateOperation: &framework.PathOperation{
				Callback:     b.pathCredsRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "generate"},
			},
		},
		HelpSynopsis:    "Read a leased Instacart Connect token for a role.",
		HelpDescription: pathCredsHelp,
	}
}

const pathCredsHelp = `
Returns a leased access token minted with the role's grant and scopes.
Read it for client_credentials roles and assertion roles with a fixed user_id;
write user_id=<id> for assertion roles with allowed_user_ids, and code=<code>
for authorization_code roles. The lease TTL is the token's remaining lifetime,
capped by the role's ttl/max_ttl and the mount's max lease TTL. Revoking the
lease of an exclusive token revokes the token at Connect.
`

func (b *backend) pathCredsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, r, resp, err := b.knownRole(ctx, req.Storage, d)
	if resp != nil || err != nil {
		return resp, readError(err) // a role dropped by an invalidation is read from storage
	}
	userID, code, problem := credsInput(r, d)
	if problem != "" {
		return logical.ErrorResponse(problem), nil
	}
	e, resp, err := b.configuredSnapshot(ctx, req.Storage)
	if resp != nil || err != nil {
		return resp, readError(err)
	}
	m := mintRequest{roleName: name, role: r, userID: userID, code: code, snap: e}
	if !r.shared() {
		exclusive := m // the mint outlives the request; m stays on the stack for cached reads
		resp, err := b.exclusiveCreds(ctx, req.Storage, &exclusive)
		return resp, readError(err)
	}
	t, warnings, err := b.sharedToken(ctx, req.Storage, &m)
	if err != nil {
		resp, err := upstreamError(err)
		return resp, readError(err)
	}
	resp, err = b.credsResponse(&m, t, warnings)
	return resp, readError(err)
}

// credsInput checks the caller's input against the role's grant and returns
// the user id and code to mint with, or a problem naming the field. A problem
// never quotes the user id (or the code): Vault's audit log HMACs request and
// response data but not error text, which would hand the id out in clear.
func credsInput(r *role, d *framework.FieldData) (userID, code, problem string) {
	userID = d.Get("user_id").(string)
	code = d.Get("code").(string)
	if code != "" && r.GrantType != connect.GrantAuthorizationCode {
		return "", "", "code is only accepted by authorization_code roles"
	}
	switch r.GrantType {
	case connect.GrantClientCredentials:
		if userID != "" {
			return "", "", "user_id is only accepted by fulfillment_user_assertion roles"
		}
	case connect.GrantFulfillmentUserAssertion:
		if r.UserID != "" {
			if userID != "" && userID != r.UserID {
				return "", "", "user_id: this role mints tokens for its fixed user only"
			}
			return r.UserID, "", ""
		}
		if userID == "" {
			return "", "", "user_id is required: write user_id=<id> to this path"
		}
		if p := validUserID(userID); p != "" {
			return "", "", "user_id " + p
		}
		if !strutil.StrListContainsGlob(r.AllowedUserIDs, userID) {
			return "", "", "user_id is not permitted by the role's allowed_user_ids"
		}
	case connect.GrantAuthorizationCode:
		if userID != "" {
			return "", "", "user_id is only accepted by fulfillment_user_assertion roles"
		}
		switch {
		case code == "":
			return "", "", "code is required: write code=<authorization code> to this path"
		case len(code) > maxCodeLength || hasControl(code):
			return "", "", fmt.Sprintf("code must be at most %d printable characters", maxCodeLength)
		}
	}
	return userID, code, ""
}

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
