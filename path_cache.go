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
	name, _, resp, err := b.namedRole(ctx, req.Storage, d)
	if resp != nil || err != nil {
		return resp, err
	}
	if !b.WriteSafeReplicationState() {
		return nil, logical.ErrReadOnly // revoke only where the tokens can also be dropped
	}
	defer b.metrics.invalidateGauges() // the next scrape shows what the flush left
	// Storage is walked a shard at a time. Memory may hold tokens storage
	// does not (another node's flush, a lost invalidation): they are revoked
	// and forgotten too.
	err = walkRoleTokens(ctx, req.Storage, name, nil, func(_ tokenUnit, keys []string) error {
		for _, key := range keys {
			if err := b.takeOutOfService(ctx, req.Storage, name, key); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, key := range b.tokens.memoryKeys(name) {
		if err := b.takeOutOfService(ctx, req.Storage, name, key); err != nil {
			return nil, err
		}
	}

	tally, err := b.revokeQueued(ctx, req.Storage, name, newRevocationPass())
	if err != nil {
		return nil, err
	}
	refused, pending := tally.refused, tally.pending
	var warnings []string
	if len(refused) > 0 {
		warnings = append(warnings, fmt.Sprintf("Connect refused to revoke %d token(s), which are no longer handed out but stay live until they expire: %s", len(refused), strings.Join(refused, ", ")))
	}
	if len(pending) > 0 {
		msg := fmt.Sprintf("could not revoke %d token(s) for now (Connect unavailable): %s; they are no longer handed out, and are retried every minute and by the next flush (this flush revoked %d)", len(pending), strings.Join(pending, ", "), tally.revoked)
		if len(warnings) > 0 {
			msg += "; " + warnings[0]
		}
		return nil, logical.CodedError(http.StatusBadGateway, msg)
	}
	return &logical.Response{Warnings: warnings, Data: map[string]any{
		"revoked_tokens": tally.revoked,
		"expired_tokens": tally.expired,
		"refused_tokens": len(refused),
		"pending_tokens": len(pending),
	}}, nil
}

// takeOutOfService moves the token(s) held under key, in storage and in
// memory, to the pending revocations, so none is handed out while (or after)
// its revocation is tried. Holding the role lock exclusively keeps a token
// minted meanwhile (publishShared) from landing between the read and the
// delete and being dropped unrevoked.
func (b *backend) takeOutOfService(ctx context.Context, s logical.Storage, role, key string) error {
	mu := b.roleLock(role)
	mu.Lock()
	defer mu.Unlock()
	stored, err := b.tokens.load(ctx, s, key)
	if err != nil {
		return err
	}
	held := []*issuedToken{stored}
	if m := b.tokens.get(key); m != nil && (stored == nil || m.AccessToken != stored.AccessToken) {
		held = append(held, m)
	}
	// The move is all or nothing, whatever the caller does meanwhile: a token
	// queued for revocation but still stored would be served again, and then
	// revoked under its readers.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	var queued []*issuedToken
	undo := func() {
		for _, t := range queued {
			b.dequeue(ctx, s, role, t.AccessToken)
		}
	}
	for _, t := range held {
		if t != nil && !t.expired(b.now()) {
			if err := b.queueRevocation(ctx, s, role, t.UserID, t.revocable); err != nil {
				undo()
				return err
			}
			queued = append(queued, t)
		}
	}
	b.tokens.forget(key)
	if stored != nil {
		if err := s.Delete(ctx, key); err != nil {
			undo() // still stored, hence still live: not queued either
			return storageError("deleting cached token", err)
		}
		b.counts.addKey(key, -1)
	}
	return nil
}
