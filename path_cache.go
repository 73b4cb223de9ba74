package instacart

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

func pathCache(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "cache/" + anyRoleName("name"),
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefixInstacart,
			OperationSuffix: "cached-tokens",
		},
		Fields: map[string]*framework.FieldSchema{
			"name": {
				Type:         framework.TypeString,
				Description:  "Name of the role.",
				Required:     true,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Role name"},
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.DeleteOperation: &framework.PathOperation{
				Callback:     b.pathCacheDelete,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "flush"},
			},
		},
		HelpSynopsis: "Drop and revoke a role's shared tokens.",
		HelpDescription: `
Deleting cache/<role> revokes the role's shared token(s) at Connect and drops
them, so the next read of creds/<role> mints a fresh one. Use it when a shared
token has leaked. A token that cannot be revoked (Connect unavailable) stays
cached and the flush fails, so it can be retried.
`,
	}
}

func (b *backend) pathCacheDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	if resp := validRoleName(name); resp != nil {
		return resp, nil
	}
	r, err := b.getRole(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return logical.ErrorResponse("unknown role %q", name), nil
	}
	keys, err := b.tokens.roleKeys(ctx, req.Storage, name)
	if err != nil || len(keys) == 0 {
		return nil, err
	}
	e, resp, err := b.configuredEngine(ctx, req.Storage)
	if resp != nil || err != nil {
		return resp, err
	}
	now := b.now()
	for _, key := range keys {
		t, err := b.tokens.load(ctx, req.Storage, key)
		if err != nil {
			return nil, err
		}
		if t != nil && now.Before(t.ExpiresAt) {
			if creds, _, ok := e.config.credentialsFor(t.CredentialsID, now); ok {
				if err := e.client.Revoke(ctx, creds, t.AccessToken); err != nil {
					if resp, err := upstreamError(err); resp != nil || err != nil {
						return resp, err
					}
				}
			}
		}
		b.tokens.forget(key)
		if err := req.Storage.Delete(ctx, key); err != nil {
			return nil, fmt.Errorf("deleting cached token: %w", err)
		}
	}
	return nil, nil
}
