package instacart

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// cleanupTimeout bounds revoking a token nobody will receive (an unusable
// answer, a mint for a role deleted meanwhile) after the request that minted
// it has given up.
const cleanupTimeout = 30 * time.Second

// errCredentialsGone: the credentials that minted a token are no longer kept,
// which happens only once every token they minted has expired.
var errCredentialsGone = errors.New("the credentials that minted the token are no longer known")

// revokeUpstream makes one attempt to revoke r where it was minted: at the
// Connect host, and with the client id and secret, named by r.CredentialsID
// (current or retired credentials); role labels it in metrics and logs. It
// is the one call that revokes a token; whatever it cannot finish now goes
// to the revocation queue (revocation_queue.go), which retries it.
//
// A token past its expiry needs no call. On failure, permanent reports
// whether trying again can ever help (Connect refused, or the credentials are
// gone); otherwise the failure is transient and the caller should retry.
// Connect answers 200 for unknown or already revoked tokens, so that counts as
// revoked. After a rotation of the secret alone (same client id and host), a
// token the old secret cannot revoke (invalid_client: Instacart disabled it)
// is revoked with the current secret, as the same application's.
func (b *backend) revokeUpstream(ctx context.Context, s logical.Storage, role string, r revocable) (permanent bool, err error) {
	if b.nothingToRevoke(r) {
		return false, nil
	}
	now := b.now()
	defer b.metrics.revocationDone(&permanent, &err)
	snap, err := b.getSnapshot(ctx, s)
	if err != nil {
		return false, err
	}
	creds, baseURL, ok := snap.config.credentialsFor(r.CredentialsID, now)
	if !ok {
		// "Gone" is final, so it is judged by storage, not by a snapshot
		// that may predate the write that made these credentials.
		cfg, err := getConfig(ctx, s)
		if err != nil {
			return false, err
		}
		if creds, baseURL, ok = cfg.credentialsFor(r.CredentialsID, now); !ok {
			return true, errCredentialsGone
		}
		b.publishSnapshot(nil) // stale: the next request reloads it
		snap = &configSnapshot{config: cfg}
	}
	client := snap.client
	if client == nil || client.BaseURL() != baseURL {
		// Minted at another host, or the config was deleted since: talk to
		// the host that minted it, never to whatever is configured now.
		cfg := *snap.config
		cfg.BaseURL, cfg.ClientID, cfg.ClientSecret = baseURL, creds.ClientID, creds.ClientSecret
		if client, err = b.newClient(&cfg); err != nil {
			return false, err
		}
		defer client.Close()
	}
	err = client.Revoke(ctx, creds, r.AccessToken, revokeLabel{role})
	if ce, ok := connect.AsError(err); ok && ce.CredentialsRejected() {
		if cur := snap.config; cur.configured() && snap.client != nil && cur.CredentialsID != r.CredentialsID &&
			cur.ClientID == creds.ClientID && cur.BaseURL == baseURL && snap.client.BaseURL() == baseURL {
			// Only the secret was rotated: the application is the same,
			// and Instacart may have disabled the old secret, so its
			// current one revokes the tokens the old one minted.
			err = snap.client.Revoke(ctx, connect.Credentials{ClientID: cur.ClientID, ClientSecret: cur.ClientSecret}, r.AccessToken, revokeLabel{role})
		}
	}
	if err != nil {
		ce, ok := connect.AsError(err)
		if !ok {
			return false, &revokeFailure{fmt.Sprintf("revoking the token at Connect: %v", err)}
		}
		if !ce.Temporary() {
			return true, fmt.Errorf("Connect refused the revocation (%s)", connectSummary(ce))
		}
		return false, &revokeFailure{"revoking the token at Connect: " + connectSummary(ce)}
	}
	return false, nil
}

// nothingToRevoke reports whether r needs no call (no token, or one past its
// expiry), counting an expired one as skipped: every revocation path asks it
// before it sends anything.
func (b *backend) nothingToRevoke(r revocable) bool {
	if r.AccessToken == "" {
		return true
	}
	if r.expired(b.now()) {
		b.metrics.revocation(revocationSkippedExpired)
		return true
	}
	return false
}

// revokeFailure is Connect not revoking a token for now (unreachable,
// failing, too slow), as opposed to the engine's own trouble (storage, the
// configuration), which is no fault of the token's.
type revokeFailure struct{ msg string }

func (e *revokeFailure) Error() string { return e.msg }
