package instacart

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// anyRoleName captures everything after the path prefix, newlines included
// (framework.MatchAllRegex stops at "\n", which would turn a hostile name into
// a 404 instead of a 400).
func anyRoleName(field string) string {
	return `(?P<` + field + `>(?s:.*))`
}

// roleNameField is the name of the role in every path that names one.
var roleNameField = &framework.FieldSchema{
	Type:         framework.TypeString,
	Description:  "Name of the role.",
	Required:     true,
	DisplayAttrs: &framework.DisplayAttributes{Name: "Role name"},
}

// namedRole reads the role a path names: resp is a 400 for an invalid name;
// r is nil for an unknown one.
func (b *backend) namedRole(ctx context.Context, s logical.Storage, d *framework.FieldData) (name string, r *role, resp *logical.Response, err error) {
	name = d.Get("name").(string)
	if resp := validRoleName(name); resp != nil {
		return name, nil, resp, nil
	}
	r, err = b.getRole(ctx, s, name)
	return name, r, nil, err
}

// knownRole is namedRole for paths that need the role: an unknown one is a 400.
func (b *backend) knownRole(ctx context.Context, s logical.Storage, d *framework.FieldData) (name string, r *role, resp *logical.Response, err error) {
	name, r, resp, err = b.namedRole(ctx, s, d)
	if resp == nil && err == nil && r == nil {
		resp = logical.ErrorResponse("unknown role %q", name)
	}
	return name, r, resp, err
}

var roleFields = map[string]*framework.FieldSchema{
	"name": roleNameField,
	"grant_type": {
		Type:          framework.TypeString,
		Description:   "OAuth grant: client_credentials, fulfillment_user_assertion or authorization_code. Fixed at creation.",
		AllowedValues: []any{string(connect.GrantClientCredentials), string(connect.GrantFulfillmentUserAssertion), string(connect.GrantAuthorizationCode)},
		DisplayAttrs:  &framework.DisplayAttributes{Name: "Grant type"},
	},
	"scopes": {
		Type:         framework.TypeCommaStringSlice,
		Description:  "Scopes to request, as a comma-separated string or a list. Empty: the application's default scopes (client_credentials only).",
		DisplayAttrs: &framework.DisplayAttributes{Name: "Scopes"},
	},
	"user_id": {
		Type:         framework.TypeString,
		Description:  "fulfillment_user_assertion roles: the fixed Connect user id tokens are minted for.",
		DisplayAttrs: &framework.DisplayAttributes{Name: "User ID"},
	},
	"allowed_user_ids": {
		Type:         framework.TypeCommaStringSlice,
		Description:  "fulfillment_user_assertion roles without user_id: globs of user ids a caller may request (\"*\" = any).",
		DisplayAttrs: &framework.DisplayAttributes{Name: "Allowed user IDs"},
	},
	"redirect_uri": {
		Type:         framework.TypeString,
		Description:  "authorization_code roles: the redirect URI registered with Instacart (absolute https URL; http only for loopback).",
		DisplayAttrs: &framework.DisplayAttributes{Name: "Redirect URI"},
	},
	"token_reuse": {
		Type:          framework.TypeLowerCaseString,
		Description:   "shared: one cached token for every reader (per user for assertion roles); exclusive: a fresh token per read, revoked when its lease ends. Default shared (exclusive for authorization_code).",
		AllowedValues: []any{reuseShared, reuseExclusive},
		DisplayAttrs:  &framework.DisplayAttributes{Name: "Token reuse"},
	},
	"min_remaining_ttl": {
		Type:         framework.TypeDurationSecond,
		Description:  "Shared tokens with less life left than this are replaced before being handed out (at most half a token's lifetime is used).",
		Default:      int(defaultMinRemainingTTL.Seconds()),
		DisplayAttrs: &framework.DisplayAttributes{Name: "Minimum remaining TTL"},
	},
	"ttl": {
		Type:         framework.TypeDurationSecond,
		Description:  "Cap on the lease TTL. 0: the token's remaining lifetime.",
		DisplayAttrs: &framework.DisplayAttributes{Name: "TTL"},
	},
	"max_ttl": {
		Type:         framework.TypeDurationSecond,
		Description:  "Cap on the lease's life including renewals. 0: the token's expiry.",
		DisplayAttrs: &framework.DisplayAttributes{Name: "Max TTL"},
	},
}

func pathRoles(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "roles/?$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixInstacart,
				OperationSuffix: "roles",
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback:     b.pathRolesList,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "list"},
				},
			},
			HelpSynopsis:    "List the roles.",
			HelpDescription: "Lists the names of the configured roles.",
		},
		{
			Pattern: "roles/" + anyRoleName("name"),
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefixInstacart,
				OperationSuffix: "role",
			},
			Fields:         roleFields,
			ExistenceCheck: b.roleExists,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback:     b.pathRoleRead,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read"},
				},
				logical.CreateOperation: &framework.PathOperation{
					Callback:     b.pathRoleWrite,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "write"},
				},
				logical.UpdateOperation: &framework.PathOperation{
					Callback:     b.pathRoleWrite,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "write"},
				},
				logical.DeleteOperation: &framework.PathOperation{
					Callback:     b.pathRoleDelete,
					DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "delete"},
				},
			},
			HelpSynopsis:    "Manage a role: the grant type and scopes of the tokens read from creds/<name>.",
			HelpDescription: pathRoleHelp,
		},
	}
}

const pathRoleHelp = `
A role fixes the OAuth grant (client_credentials, fulfillment_user_assertion or
authorization_code) and scopes of the tokens read from creds/<name>, whether a
token is shared between readers or minted per read (token_reuse), and optional
caps on the lease (ttl, max_ttl). grant_type cannot change after creation.
`

func (b *backend) roleExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	_, r, resp, err := b.namedRole(ctx, req.Storage, d)
	return resp == nil && r != nil, err
}

func (b *backend) pathRolesList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, roleStoragePrefix)
	if err != nil {
		return nil, requestError("role list", fmt.Errorf("listing roles: %w", err))
	}
	return logical.ListResponse(names), nil
}

func (b *backend) pathRoleRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	_, r, resp, err := b.namedRole(ctx, req.Storage, d)
	if resp != nil || err != nil || r == nil {
		return resp, requestError("role read", err)
	}
	return &logical.Response{Data: r.responseData()}, nil
}

func (b *backend) pathRoleWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := validRoleName(name); resp != nil {
		return resp, nil
	}
	old, r, warnings, resp, err := b.writeRole(ctx, req.Storage, name, d)
	if resp != nil || err != nil {
		return resp, requestError("role write", err)
	}
	if old != nil && old.hash != r.hash && old.shared() {
		warnings = append(warnings, fmt.Sprintf("shared tokens minted for the previous definition are no longer handed out; they stay valid for the leases that hold them until they expire, and DELETE cache/%s revokes them", name))
	}
	if len(warnings) == 0 {
		return nil, nil
	}
	return &logical.Response{Warnings: warnings}, nil
}

func (b *backend) pathRoleDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := validRoleName(name); resp != nil {
		return resp, nil
	}
	old, err := b.deleteRole(ctx, req.Storage, name)
	if err != nil {
		return nil, requestError("role delete", err)
	}
	if old == nil || !old.shared() {
		return nil, nil
	}
	// Shared tokens of a deleted role stay valid upstream for holders of their
	// leases, stored out of service so a flush can still revoke them.
	return &logical.Response{Warnings: []string{fmt.Sprintf("the role's shared tokens are no longer handed out; they stay valid for the leases that hold them until they expire, and DELETE cache/%s revokes them", name)}}, nil
}
