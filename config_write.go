package instacart

import (
	"context"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// configInput is a config write's fields as given: nil for a field left out.
type configInput struct {
	clientID, clientSecret, baseURL *string
	requestTimeout                  *time.Duration
	maxConcurrentMints, maxRetries  *int
	renewBy                         *time.Time
	verify                          bool
}

// setGiven overwrites *dst with *v when v was given.
func setGiven[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// configure stores a config write, then revokes the token that verified new
// credentials: the revocation looks the credentials up, so it runs once
// writeConfig has saved them and let go of configMu.
func (b *backend) configure(ctx context.Context, s logical.Storage, in configInput) (*logical.Response, error) {
	resp, verified, err := b.writeConfig(ctx, s, in)
	if verified != nil {
		b.revokeSoon(ctx, s, pendingRevocation{Role: verifyQueue, revocable: *verified}, "minted to verify the credentials")
	}
	return resp, err
}

// writeConfig validates and stores a config write under configMu. verified
// is the token minted to verify new credentials once they are saved, for the
// caller to revoke.
func (b *backend) writeConfig(ctx context.Context, s logical.Storage, in configInput) (resp *logical.Response, verified *revocable, err error) {
	b.configMu.Lock()
	defer b.configMu.Unlock()

	old, err := getConfig(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	cfg := &connectConfig{
		BaseURL:        connect.DefaultBaseURL,
		RequestTimeout: connect.DefaultRequestTimeout,
		MaxRetries:     connect.DefaultMaxRetries,
	}
	switch {
	case old.configured():
		copied := *old
		cfg = &copied
	case old != nil: // a deleted config: start afresh, keep what revokes
		cfg.Retired, cfg.LongestTokenLifetime = old.Retired, old.LongestTokenLifetime
	}

	setGiven(&cfg.ClientID, in.clientID)
	setGiven(&cfg.ClientSecret, in.clientSecret)
	setGiven(&cfg.BaseURL, in.baseURL)
	setGiven(&cfg.RequestTimeout, in.requestTimeout)
	setGiven(&cfg.MaxConcurrentMints, in.maxConcurrentMints)
	setGiven(&cfg.MaxRetries, in.maxRetries)
	mintsGiven := in.maxConcurrentMints != nil

	switch {
	case cfg.ClientID == "":
		return logical.ErrorResponse("client_id is required"), nil, nil
	case len(cfg.ClientID) > maxFieldLength || hasControl(cfg.ClientID):
		return logical.ErrorResponse("client_id must be at most %d printable characters", maxFieldLength), nil, nil
	case cfg.ClientSecret == "":
		return logical.ErrorResponse("client_secret is required"), nil, nil
	case len(cfg.ClientSecret) > maxFieldLength:
		return logical.ErrorResponse("client_secret must be at most %d characters", maxFieldLength), nil, nil
	case cfg.RequestTimeout <= 0 || cfg.RequestTimeout > maxRequestTimeout:
		return logical.ErrorResponse("request_timeout must be between 1s and %s", maxRequestTimeout), nil, nil
	case cfg.MaxRetries < 0 || cfg.MaxRetries > maxMaxRetries:
		return logical.ErrorResponse("max_retries must be between 0 and %d", maxMaxRetries), nil, nil
	case cfg.MaxConcurrentMints < 0 || cfg.MaxConcurrentMints > maxMaxConcurrentMints || (mintsGiven && cfg.MaxConcurrentMints == 0):
		return logical.ErrorResponse("max_concurrent_mints must be between 1 and %d", maxMaxConcurrentMints), nil, nil
	}
	base, err := normalizeBaseURL(cfg.BaseURL)
	if err != nil {
		return logical.ErrorResponse("base_url: %s", err), nil, nil
	}
	cfg.BaseURL = base

	// The stored secret was written for one client id at one host. Sending
	// it anywhere else (verify, mints, revocations) would let anyone with
	// update on config read it, so a move must bring its own secret.
	if old.configured() && in.clientSecret == nil && (cfg.BaseURL != old.BaseURL || cfg.ClientID != old.ClientID) {
		return logical.ErrorResponse("client_secret is required when base_url or client_id changes: the stored secret is only ever sent to the host and client id it was written with"), nil, nil
	}

	credsChanged := !old.configured() || old.ClientID != cfg.ClientID || old.ClientSecret != cfg.ClientSecret || old.BaseURL != cfg.BaseURL
	if credsChanged {
		if cfg.CredentialsID, err = newRandomID(); err != nil {
			return nil, nil, err
		}
	}
	var renewBy time.Time
	if in.renewBy != nil {
		renewBy = *in.renewBy
	}
	cfg.RenewBy = nextRenewBy(cfg.RenewBy, renewBy, in.renewBy != nil, credsChanged)

	next, err := b.newSnapshot(cfg)
	if err != nil {
		return logical.ErrorResponse("base_url: %s", err), nil, nil
	}
	var minted *connect.Token
	saveCtx := ctx
	if credsChanged && in.verify {
		// Once the check is sent, a caller that leaves must not cut it
		// short: a token Connect mints would be live with nothing holding
		// it. It is seen, saved with the credentials that revoke it, and
		// queued for revocation, whenever the caller leaves.
		mintCtx, cancel := b.outliveCaller(ctx, maxMintWait)
		minted, resp, err = b.verifyCredentials(mintCtx, next.client)
		cancel()
		if resp != nil || err != nil {
			next.client.Close()
			return resp, nil, err
		}
		// The save is one storage write, and only saved credentials can
		// revoke the token later: neither the caller leaving nor the
		// mount's clean-up cuts it short.
		var cancelSave context.CancelFunc
		saveCtx, cancelSave = context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancelSave()
	}

	// The old credentials are retired as of the save, not of the check:
	// mints with them go on meanwhile, their tokens' lives counting from
	// their requests (retention covers a mint in flight from here on).
	now := b.now()
	if credsChanged && old.configured() {
		retired := *old
		retired.retire(now.Add(b.retention(old)))
		cfg.Retired = retired.Retired
	}
	cfg.Retired = pruneRetired(cfg.Retired, now)
	if err := putConfig(saveCtx, s, cfg); err != nil {
		if minted != nil {
			// The credentials were not saved, so the revocation queue,
			// which looks them up by id, cannot retry with them.
			b.revokeUnsaved(ctx, next.client, minted)
		} else {
			next.client.Close()
		}
		return nil, nil, err
	}
	// Swap in the new client; shared tokens from other credentials are
	// skipped by their credentials id, so memory only needs clearing.
	b.publishSnapshot(next)
	if credsChanged {
		b.tokens.clear()
	}
	if minted != nil {
		r := revocableToken(cfg.CredentialsID, minted)
		verified = &r
	}
	if in.clientSecret != nil && !credsChanged {
		// Writing the stored secret again is no rotation: say so, rather
		// than let the write look like one.
		resp = &logical.Response{}
		resp.AddWarning(unchangedCredentialsWarning)
	}
	return resp, verified, nil
}

// unchangedCredentialsWarning answers a config write whose client_secret is
// the one stored, for the same client_id and base_url.
const unchangedCredentialsWarning = "client_id and client_secret are unchanged: the credentials were not rotated nor verified again, and the tokens they minted are still served; to rotate, write the new client_secret Instacart issued; to replace the tokens, flush each role (vault delete <mount>/cache/<role>)"

// deleteConfig retires the current credentials, if any, under configMu.
func (b *backend) deleteConfig(ctx context.Context, s logical.Storage) error {
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := getConfig(ctx, s)
	if err != nil || !cfg.configured() {
		return err
	}
	now := b.now()
	cfg.retire(now.Add(b.retention(cfg)))
	cfg.Retired = pruneRetired(cfg.Retired, now)
	if err := putConfig(ctx, s, cfg); err != nil {
		return err
	}
	b.resetSnapshot()
	b.metrics.invalidateGauges()
	return nil
}
