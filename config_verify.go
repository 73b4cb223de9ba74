package instacart

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// A config write with verify=true mints a token to prove the credentials
// work; this is that check, and the revocation of its token when the
// credentials could not be saved (saved, the revocation queue has it).

// verifyCredentials mints a client_credentials token to prove Connect
// accepts the credentials before they are saved. The caller revokes the
// token once they are (through the revocation queue, which needs them saved).
func (b *backend) verifyCredentials(ctx context.Context, client *connect.Client) (*connect.Token, *logical.Response, error) {
	tok, err := client.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials, Label: verifyLabel()})
	if err != nil {
		if ce, _ := connect.AsError(err); ce != nil {
			if unusable, named := ce.UnusableToken(); named {
				// Connect minted a token with these credentials, so it
				// accepts them; only its answer was unusable. They are saved
				// and the token goes to the revocation queue, which needs
				// them saved to retry (unsaved, one failed try left it live).
				b.Logger().Warn("Connect's answer to the credentials check could not be used, but it minted a token with them: saving them and revoking that token", "error", errorSummary(err))
				return &unusable, nil, nil
			}
		}
		resp, err := upstreamError(err)
		if resp != nil {
			resp.Data["error"] = "verify: " + resp.Data["error"].(string) + " (nothing was saved; write verify=false to skip this check)"
		}
		return nil, resp, err
	}
	return tok, nil, nil
}

// unsavedRevocationWindow bounds the retries that revoke a token minted to
// verify credentials that could not be saved.
const unsavedRevocationWindow = 5 * time.Minute

// revokeUnsaved revokes, in the background, a token minted with credentials
// that were never saved, so nothing else will: it tries until Connect takes
// or refuses it, the token expires, unsavedRevocationWindow passes or the
// mount is cleaned up, waiting between tries as long as Connect's
// Retry-After asks and backing off otherwise. As the mount is cleaned up, it
// tries once while the caller (ctx) waits. It closes client when done.
func (b *backend) revokeUnsaved(ctx context.Context, client *connect.Client, tok *connect.Token) {
	started := b.bg.goDetached(unsavedRevocationWindow, func(bgCtx context.Context) {
		defer client.Close()
		backoff := time.Second
		for {
			err := client.Revoke(bgCtx, client.Credentials(), tok.AccessToken, verifyLabel())
			ce, isConnect := connect.AsError(err)
			switch {
			case err == nil:
				return
			case isConnect && !ce.Temporary():
				b.Logger().Warn("Connect refused to revoke the token minted to verify credentials that were not saved; it expires by itself", "expires_at", tok.ExpiresAt, "error", connectSummary(ce))
				return
			}
			wait := backoff
			if isConnect {
				wait = max(wait, ce.RetryAfter)
			}
			left := tok.ExpiresAt.Sub(b.now())
			if left <= 0 {
				return // expired: nothing left to revoke
			}
			wait = min(wait, left) // one last try before it expires
			if serr := b.sleep(bgCtx, wait); serr != nil {
				b.Logger().Warn("could not revoke the token minted to verify credentials that were not saved; it expires by itself", "expires_at", tok.ExpiresAt, "error", errorSummary(err))
				return
			}
			backoff = min(2*backoff, time.Minute)
		}
	})
	if !started {
		// The mount is being cleaned up: one last attempt, on a context of
		// its own (the caller's and the mount's have ended).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		defer client.Close()
		if err := client.Revoke(rctx, client.Credentials(), tok.AccessToken, verifyLabel()); err != nil {
			b.Logger().Warn("could not revoke the token minted to verify credentials that were not saved as the mount shuts down; it expires by itself", "expires_at", tok.ExpiresAt, "error", errorSummary(err))
		}
	}
}
