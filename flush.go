package instacart

import (
	"context"

	"github.com/hashicorp/vault/sdk/logical"
)

// flushRole takes every shared token the engine holds for role out of
// service, then revokes the role's queue in one pass (which also retries the
// tokens already waiting there). Storage is walked a shard at a time. Memory
// may hold tokens storage does not (another node's flush, a lost
// invalidation): they are revoked and forgotten too.
func (b *backend) flushRole(ctx context.Context, s logical.Storage, role string) (revocationTally, error) {
	err := walkRoleTokens(ctx, s, role, nil, func(_ tokenUnit, keys []string) error {
		for _, key := range keys {
			if err := b.takeOutOfService(ctx, s, role, key); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return revocationTally{}, err
	}
	for _, key := range b.tokens.memoryKeys(role) {
		if err := b.takeOutOfService(ctx, s, role, key); err != nil {
			return revocationTally{}, err
		}
	}
	return b.drainQueue(ctx, s, role, passFlush, newHostHealth())
}

// takeOutOfService moves the token(s) held under key, in storage and in
// memory, to the revocation queue, so none is handed out while (or after)
// its revocation is tried. Holding the role lock exclusively keeps a token
// minted meanwhile (publishShared) from landing between the read and the
// delete and being dropped unrevoked. Each queue entry stays claimed until
// the move is done, so no pass revokes a token that an undo puts back.
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
	var claimed, fresh []string
	defer func() {
		for _, k := range claimed {
			b.claims.release(k)
		}
	}()
	undo := func() {
		for _, k := range fresh {
			b.dequeue(ctx, s, role, k)
		}
	}
	for _, t := range held {
		if t == nil || t.expired(b.now()) {
			continue
		}
		pk := pendingKey(role, t.AccessToken)
		if err := b.claims.claim(ctx, pk); err != nil {
			undo()
			return err
		}
		claimed = append(claimed, pk)
		from := ""
		if t == stored {
			from = key
		}
		isNew, err := b.enqueue(ctx, s, pk, pendingRevocation{Role: role, UserID: t.UserID, From: from, revocable: t.revocable})
		if err != nil {
			undo()
			return err
		}
		if isNew {
			fresh = append(fresh, pk)
		}
	}
	b.tokens.forget(key)
	if stored != nil {
		if err := s.Delete(ctx, key); err != nil {
			// A delete that failed may still have applied (a leader losing
			// its leadership mid-commit): only a token storage still holds
			// goes back in service. When even that is unknown it stays
			// queued: no pass revokes it while its key still holds it.
			if still, rerr := b.tokens.load(ctx, s, key); rerr == nil && (still == nil || still.AccessToken != stored.AccessToken) {
				b.counts.addKey(key, -1)
				return nil
			} else if rerr == nil {
				undo()
			}
			return storageError("deleting cached token", err)
		}
		b.counts.addKey(key, -1)
	}
	return nil
}
