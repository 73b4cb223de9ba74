package instacart

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

func pathConfig(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: configStoragePath,
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefixInstacart,
		},
		Fields: map[string]*framework.FieldSchema{
			"client_id": {
				Type:         framework.TypeString,
				Description:  "Client id of the Instacart Connect application.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "Client ID"},
			},
			"client_secret": {
				Type:         framework.TypeString,
				Description:  "Client secret of the Instacart Connect application. Write-only: never returned.",
				DisplayAttrs: &framework.DisplayAttributes{Name: "Client secret", Sensitive: true},
			},
			"base_url": {
				Type:         framework.TypeString,
				Description:  "Connect host. Must be https://; http:// only for loopback hosts (local fakes).",
				Default:      connect.DefaultBaseURL,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Base URL"},
			},
			"request_timeout": {
				Type:         framework.TypeDurationSecond,
				Description:  "Timeout of each HTTP request to Connect, as a duration (10s) or seconds; reads give seconds (10).",
				Default:      int(connect.DefaultRequestTimeout.Seconds()),
				DisplayAttrs: &framework.DisplayAttributes{Name: "Request timeout"},
			},
			"max_concurrent_mints": {
				Type:         framework.TypeInt,
				Description:  fmt.Sprintf("Token requests to Connect in flight at once, 1 to %d; more wait (within their request's deadline).", maxMaxConcurrentMints),
				Default:      defaultMaxConcurrentMints,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Max concurrent mints"},
			},
			"max_retries": {
				Type:         framework.TypeInt,
				Description:  fmt.Sprintf("Retries of transient Connect failures (408, 429, 5xx, network errors), 0 to %d.", maxMaxRetries),
				Default:      connect.DefaultMaxRetries,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Max retries"},
			},
			"renew_by": renewByField,
			"verify": {
				Type:         framework.TypeBool,
				Description:  "Before saving new credentials, mint a client_credentials token with them; refuse the write if Connect rejects them. Not stored.",
				Default:      true,
				DisplayAttrs: &framework.DisplayAttributes{Name: "Verify"},
			},
		},
		ExistenceCheck: b.configExists,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathConfigRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "configuration"},
			},
			logical.CreateOperation: &framework.PathOperation{
				Callback:     b.pathConfigWrite,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "configure"},
			},
			logical.UpdateOperation: &framework.PathOperation{
				Callback:     b.pathConfigWrite,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "configure"},
			},
			logical.DeleteOperation: &framework.PathOperation{
				Callback:     b.pathConfigDelete,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "delete", OperationSuffix: "configuration"},
			},
		},
		HelpSynopsis:    "Configure the Instacart Connect application credentials.",
		HelpDescription: pathConfigHelp,
	}
}

const pathConfigHelp = `
Stores the Connect application's client_id and client_secret, the Connect host
(base_url) and how upstream calls are made (request_timeout, max_retries).
client_secret is write-only, and a write that changes base_url or client_id
must carry it too, so the stored secret is never sent to a host it was not
written for. When the credentials change or the config is deleted, the
previous ones are kept only to revoke tokens they minted until those expire;
shared tokens minted with them are no longer handed out.
`

func (b *backend) configExists(ctx context.Context, req *logical.Request, _ *framework.FieldData) (bool, error) {
	cfg, err := getConfig(ctx, req.Storage)
	return cfg.configured(), err
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	cfg, err := getConfig(ctx, req.Storage)
	if err != nil || !cfg.configured() {
		return nil, requestError("config read", err)
	}
	resp := &logical.Response{Data: map[string]any{
		"client_id":            cfg.ClientID,
		"client_secret_set":    cfg.ClientSecret != "",
		"base_url":             cfg.BaseURL,
		"request_timeout":      int64(cfg.RequestTimeout.Seconds()),
		"max_retries":          cfg.MaxRetries,
		"max_concurrent_mints": cfg.mintBound(),
	}}
	addRenewBy(resp, cfg, b.now())
	return resp, nil
}

func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if !b.WriteSafeReplicationState() {
		return nil, logical.ErrReadOnly // forward before verify sends anything
	}
	defer b.metrics.invalidateGauges() // the next scrape shows the new config
	resp, verified, err := b.writeConfig(ctx, req.Storage, d)
	if verified != nil {
		// Outside configMu: the revocation looks the credentials up.
		b.revokeSoon(ctx, req.Storage, pendingRevocation{Role: verifyQueue, revocable: *verified}, "minted to verify the credentials")
	}
	return resp, requestError("config write", err)
}

// writeConfig validates and stores a config write under configMu. verified
// is the token minted to verify new credentials once they are saved, for the
// caller to revoke.
func (b *backend) writeConfig(ctx context.Context, s logical.Storage, d *framework.FieldData) (resp *logical.Response, verified *revocable, err error) {
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

	if v, ok := d.GetOk("client_id"); ok {
		cfg.ClientID = strings.TrimSpace(v.(string))
	}
	if v, ok := d.GetOk("client_secret"); ok {
		cfg.ClientSecret = v.(string)
	}
	if v, ok := d.GetOk("base_url"); ok {
		cfg.BaseURL = v.(string)
	}
	if v, ok := d.GetOk("request_timeout"); ok {
		cfg.RequestTimeout = time.Duration(v.(int)) * time.Second
	}
	v, mintsGiven := d.GetOk("max_concurrent_mints")
	if mintsGiven {
		cfg.MaxConcurrentMints = v.(int)
	}
	if v, ok := d.GetOk("max_retries"); ok {
		cfg.MaxRetries = v.(int)
	}
	renewBy, renewByGiven, problem := renewByInput(d)
	if problem != "" {
		return logical.ErrorResponse(problem), nil, nil
	}

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
	_, secretGiven := d.GetOk("client_secret")
	if old.configured() && !secretGiven && (cfg.BaseURL != old.BaseURL || cfg.ClientID != old.ClientID) {
		return logical.ErrorResponse("client_secret is required when base_url or client_id changes: the stored secret is only ever sent to the host and client id it was written with"), nil, nil
	}

	credsChanged := !old.configured() || old.ClientID != cfg.ClientID || old.ClientSecret != cfg.ClientSecret || old.BaseURL != cfg.BaseURL
	if credsChanged {
		if cfg.CredentialsID, err = newRandomID(); err != nil {
			return nil, nil, err
		}
	}
	cfg.RenewBy = nextRenewBy(cfg.RenewBy, renewBy, renewByGiven, credsChanged)

	next, err := b.newSnapshot(cfg)
	if err != nil {
		return logical.ErrorResponse("base_url: %s", err), nil, nil
	}
	var minted *connect.Token
	saveCtx := ctx
	if credsChanged && d.Get("verify").(bool) {
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
	if secretGiven && !credsChanged {
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

// pathConfigDelete removes the current credentials. Exclusive tokens they
// minted may still be live at Connect, so, as a rotation does, it keeps them
// (never returned) as retired until those tokens have expired; lease
// revocations can still reach Connect, and the periodic prune drops them.
func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := getConfig(ctx, req.Storage)
	if err != nil || !cfg.configured() {
		return nil, requestError("config delete", err)
	}
	now := b.now()
	cfg.retire(now.Add(b.retention(cfg)))
	cfg.Retired = pruneRetired(cfg.Retired, now)
	if err := putConfig(ctx, req.Storage, cfg); err != nil {
		return nil, requestError("config delete", err)
	}
	b.resetSnapshot()
	b.metrics.invalidateGauges()
	return nil, nil
}
