package instacart

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

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
Deleting cache/<role> revokes the role's shared token(s) at Connect, each at
the host and with the credentials that minted it, and drops them, so the next
read of creds/<role> mints a fresh one. Use it when a shared token has leaked.
A token Connect refuses to revoke is dropped and named in a warning; a token
that cannot be revoked for now (Connect unavailable) stays cached and the
flush fails after trying the rest, so it can be retried.
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
	stored, err := b.tokens.roleKeys(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	// Memory may hold tokens storage does not (another node's flush, a lost
	// invalidation): they are revoked and forgotten too.
	keys := map[string]bool{}
	for _, k := range append(stored, b.tokens.memoryKeys(roleTokenPrefix(name))...) {
		keys[k] = true
	}

	var refused, pending []string
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		t, err := b.tokens.load(ctx, req.Storage, key)
		if err != nil {
			return nil, err
		}
		held := []*cachedToken{t}
		if m := b.tokens.get(key); m != nil && (t == nil || m.AccessToken != t.AccessToken) {
			held = append(held, m)
		}
		keep := false
		for _, t := range held {
			if t == nil {
				continue
			}
			permanent, err := b.revokeUpstream(ctx, req.Storage, t.CredentialsID, t.AccessToken, t.ExpiresAt)
			switch {
			case err == nil:
			case permanent:
				refused = append(refused, t.describe())
				b.Logger().Warn("flush: Connect refused to revoke a token; dropping it anyway", "role", name, "expires_at", t.ExpiresAt, "error", err)
			default:
				pending = append(pending, t.describe())
				b.Logger().Warn("flush: could not revoke a token for now; keeping it for a retry", "role", name, "error", err)
				keep = true
			}
		}
		if keep {
			continue
		}
		b.tokens.forget(key)
		if err := req.Storage.Delete(ctx, key); err != nil {
			return nil, storageError("deleting cached token", err)
		}
	}

	var warnings []string
	if len(refused) > 0 {
		warnings = append(warnings, fmt.Sprintf("Connect refused to revoke %d token(s), which were dropped and stay live until they expire: %s", len(refused), strings.Join(refused, ", ")))
	}
	if len(pending) > 0 {
		msg := fmt.Sprintf("could not revoke %d token(s) for now (Connect unavailable): %s; they stay cached, run the flush again", len(pending), strings.Join(pending, ", "))
		if len(warnings) > 0 {
			msg += "; " + warnings[0]
		}
		return nil, logical.CodedError(http.StatusBadGateway, msg)
	}
	if len(warnings) == 0 {
		return nil, nil
	}
	return &logical.Response{Warnings: warnings}, nil
}
