package instacart

import (
	"context"
	"fmt"

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
	snap, resp, err := b.configuredSnapshot(ctx, req.Storage)
	if resp != nil || err != nil {
		return resp, readError(err)
	}
	m := mintRequest{roleName: name, role: r, userID: userID, code: code, snap: snap}
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
