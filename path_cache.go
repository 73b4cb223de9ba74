package instacart

import (
	"context"
	"fmt"
	"net/http"
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
			"name": roleNameField,
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.DeleteOperation: &framework.PathOperation{
				Callback:     b.pathCacheDelete,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "flush"},
			},
		},
		HelpSynopsis: "Drop and revoke a role's shared tokens, also of a deleted or redefined role.",
		HelpDescription: `
Deleting cache/<role> takes every shared token the engine holds for the role
out of service at once and revokes it at Connect, each at the host and with
the credentials that minted it, so the next read of creds/<role> mints a fresh
one. That includes tokens minted for an earlier definition of the role, with
rotated credentials, or for a role since deleted: name the deleted role. Use
it when a shared token has leaked.

It answers with counts: revoked_tokens (revoked at Connect), expired_tokens
(already expired, dropped without a call), refused_tokens (Connect refused to
revoke them; each is also named in a warning, and stays live until it
expires) and pending_tokens (always 0 in a success). A token that cannot be
revoked for now (Connect unavailable) is never handed out again and is
retried every minute and by the next flush; the flush then fails with a 502
naming it. Tokens of the role already waiting for revocation are tried, and
counted, too.
`,
	}
}

func (b *backend) pathCacheDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	// The role need not exist: a deleted role's tokens stay stored, out of
	// service but valid for their leases, until they expire or this revokes them.
	name, r, resp, err := b.namedRole(ctx, req.Storage, d)
	if resp != nil || err != nil {
		return resp, requestError("flush", err)
	}
	if !b.WriteSafeReplicationState() {
		return nil, logical.ErrReadOnly // revoke only where the tokens can also be dropped
	}
	defer b.metrics.invalidateGauges() // the next scrape shows what the flush left
	tally, err := b.flushRole(ctx, req.Storage, name)
	if err != nil {
		return nil, requestError("flush", err)
	}
	var warnings []string
	if r == nil && tally.revoked+tally.expired+tally.refused+tally.pending+tally.setAside == 0 {
		warnings = append(warnings, fmt.Sprintf("no role %q exists, and the engine held no token for it: check the name (vault list instacart/roles)", name))
	}
	if tally.refused > 0 {
		warnings = append(warnings, fmt.Sprintf("Connect refused to revoke %d token(s), which are no longer handed out but stay live until they expire: %s", tally.refused, named(tally.refusedNames, tally.refused)))
	}
	if tally.setAside > 0 {
		warnings = append(warnings, fmt.Sprintf("%d queued revocation(s) could not be read and were set aside under %s (the engine's log names them)", tally.setAside, asideStoragePrefix))
	}
	if tally.pending > 0 || !tally.complete {
		status := http.StatusBadGateway
		msg := fmt.Sprintf("could not revoke %d token(s) for now: %s; they are no longer handed out, and are retried every minute and by the next flush (this flush revoked %d)", tally.pending, named(tally.pendingNames, tally.pending), tally.revoked)
		if tally.unreadable > 0 {
			msg += fmt.Sprintf("; %d of them could not be read from storage", tally.unreadable)
		}
		if !tally.complete {
			status = http.StatusGatewayTimeout
			msg = "the flush ran out of time before the end of the revocation queue; " + msg
		}
		if len(warnings) > 0 {
			msg += "; " + strings.Join(warnings, "; ")
		}
		return nil, logical.CodedError(status, msg)
	}
	return &logical.Response{Warnings: warnings, Data: map[string]any{
		"revoked_tokens": tally.revoked,
		"expired_tokens": tally.expired,
		"refused_tokens": tally.refused,
		"pending_tokens": tally.pending,
	}}, nil
}

// named lists the first names of n tokens, saying how many more there are.
func named(names []string, n int) string {
	s := strings.Join(names, ", ")
	if more := n - len(names); more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}
