package instacart

import (
	"context"
	"errors"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// exclusiveCreds mints a token for one reader. A write-ahead log entry covers
// the gap between the mint and the lease, so a token nobody received is
// revoked by Vault's rollback even if the plugin dies in that gap.
func (b *backend) exclusiveCreds(ctx context.Context, s logical.Storage, m *mintRequest) (*logical.Response, error) {
	// On a performance standby this write fails first, so Vault forwards the
	// request before anything is minted (or a code is spent).
	intent, err := putWAL(ctx, s, &walExclusiveToken{Role: m.roleName, UserID: m.userID, revocable: revocable{CredentialsID: m.credentialsID()}})
	if err != nil {
		return nil, err
	}
	if m.code != "" {
		claimed, err := b.claimCode(ctx, s, m.code)
		if err != nil || !claimed {
			b.deleteWAL(ctx, s, intent)
			if err != nil {
				return nil, err
			}
			return logical.ErrorResponse("code: this authorization code was already sent to Connect, and codes are single-use: get a new one from Instacart"), nil
		}
	}
	// discard revokes a token no lease will hold; the revocation queue
	// records it before the WAL entry that covered it goes.
	discard := func(tok *connect.Token, walID, why string) {
		if _, err := b.revokeSoon(ctx, s, pendingRevocation{Role: m.roleName, UserID: m.userID, revocable: revocableToken(m.credentialsID(), tok)}, why); err == nil {
			b.deleteWAL(ctx, s, walID)
		}
	}
	abandoned := func(tok *connect.Token, err error) {
		// The caller gave up before Connect answered: nobody will lease it.
		if err == nil {
			discard(tok, intent, "the caller gave up before Connect answered")
			return
		}
		if m.code != "" && !codeMayBeConsumed(err) {
			b.releaseCode(ctx, s, m.code)
		}
		b.deleteWAL(ctx, s, intent)
	}
	tok, err := b.mintDetached(ctx, s, m, abandoned)
	if err != nil {
		inFlight := errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
		if !inFlight || errors.Is(err, errMintQueue) {
			b.deleteWAL(ctx, s, intent) // Connect answered, or was never asked: nothing in flight
		}
		if m.code != "" && !codeMayBeConsumed(err) {
			b.releaseCode(ctx, s, m.code)
		}
		return mintError(err, m.role.GrantType)
	}
	minted, err := putWAL(ctx, s, &walExclusiveToken{Role: m.roleName, UserID: m.userID, revocable: revocableToken(m.credentialsID(), tok)})
	if err != nil {
		discard(tok, intent, "could not be recorded in the write-ahead log")
		return nil, err
	}
	b.deleteWAL(ctx, s, intent)

	t := m.issued(tok)
	if !t.leasable(b.now()) {
		discard(tok, minted, "too short-lived to lease")
		return nil, errTooShortToLease
	}
	resp, err := b.credsResponse(m, t, nil)
	if err != nil {
		discard(tok, minted, "expired before it could be leased")
		return nil, err
	}
	if err := framework.DeleteWAL(ctx, s, minted); err != nil {
		// Vault would never lease this token; the rollback or this revokes it.
		discard(tok, minted, "the response could not be completed")
		return nil, storageError("completing the write-ahead log", err)
	}
	b.metrics.read(m.roleName, sourceMinted)
	return resp, nil
}
