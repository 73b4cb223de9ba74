package instacart

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

const configStoragePath = "config"

// Bounds on operator input: a timeout past a few minutes or dozens of retries
// would hold Vault requests hostage to a failing Connect.
const (
	maxRequestTimeout = 5 * time.Minute
	maxMaxRetries     = 10
	maxFieldLength    = 1024
	// maxMaxConcurrentMints: beyond this the bound protects nothing.
	maxMaxConcurrentMints = 1024
)

// defaultMaxConcurrentMints keeps a stampede of first-time readers (a
// retailer's shoppers arriving at once) from becoming as many simultaneous
// token requests, while leaving room for Connect's latency: 32 in flight at
// 50 ms is over 600 mints a second.
const defaultMaxConcurrentMints = 32

// connectConfig is the stored configuration.
type connectConfig struct {
	ClientID       string        `json:"client_id"`
	ClientSecret   string        `json:"client_secret"`
	BaseURL        string        `json:"base_url"`
	RequestTimeout time.Duration `json:"request_timeout"`
	MaxRetries     int           `json:"max_retries"`
	// MaxConcurrentMints bounds token requests in flight at once (0: the
	// default, for entries written before the field existed).
	MaxConcurrentMints int `json:"max_concurrent_mints,omitempty"`
	// CredentialsID names the current (client id, secret, base URL): shared
	// tokens and leases record it so tokens minted with other credentials are
	// never handed out and are revoked with the credentials that minted them.
	CredentialsID string `json:"credentials_id"`
	// Retired are previous credentials kept until every token they minted has expired.
	Retired []retiredCredentials `json:"retired,omitempty"`
	// LongestTokenLifetime is the longest token life Connect has handed out,
	// when longer than it documents: retired credentials are kept that long.
	LongestTokenLifetime time.Duration `json:"longest_token_lifetime,omitempty"`
	// RenewBy is when Instacart wants the credentials rotated (renew_by.go).
	RenewBy time.Time `json:"renew_by,omitzero"`
}

// retiredCredentials are credentials replaced by a config write.
type retiredCredentials struct {
	CredentialsID string    `json:"credentials_id"`
	ClientID      string    `json:"client_id"`
	ClientSecret  string    `json:"client_secret"`
	BaseURL       string    `json:"base_url"`
	RetainUntil   time.Time `json:"retain_until"`
}

// mintBound is how many token requests may be in flight at once.
func (c *connectConfig) mintBound() int {
	if c.MaxConcurrentMints <= 0 {
		return defaultMaxConcurrentMints
	}
	return c.MaxConcurrentMints
}

// configured reports whether c holds current credentials. A deleted config
// leaves an entry holding only retired credentials, so leases of tokens they
// minted can still be revoked upstream.
func (c *connectConfig) configured() bool { return c != nil && c.CredentialsID != "" }

// retire moves the current credentials to Retired, kept until every token
// they minted has expired.
func (c *connectConfig) retire(until time.Time) {
	if !c.configured() {
		return
	}
	c.Retired = append(c.Retired, retiredCredentials{
		CredentialsID: c.CredentialsID,
		ClientID:      c.ClientID,
		ClientSecret:  c.ClientSecret,
		BaseURL:       c.BaseURL,
		RetainUntil:   until,
	})
	c.CredentialsID, c.ClientID, c.ClientSecret = "", "", ""
}

func (c *connectConfig) newClient(logger hclog.Logger, now func() time.Time, obs connect.Observer) (*connect.Client, error) {
	client, err := connect.New(connect.Config{
		Observer:       obs,
		Now:            now,
		BaseURL:        c.BaseURL,
		Credentials:    connect.Credentials{ClientID: c.ClientID, ClientSecret: c.ClientSecret},
		RequestTimeout: c.RequestTimeout,
		MaxRetries:     c.MaxRetries,
		Logger:         logger,
	})
	if err != nil {
		return nil, fmt.Errorf("building Connect client: %w", err)
	}
	return client, nil
}

// credentialsFor finds the credentials a token was minted with: the current
// ones or retired ones not yet past their retention.
func (c *connectConfig) credentialsFor(id string, now time.Time) (connect.Credentials, string, bool) {
	if c == nil || id == "" {
		return connect.Credentials{}, "", false
	}
	if id == c.CredentialsID {
		return connect.Credentials{ClientID: c.ClientID, ClientSecret: c.ClientSecret}, c.BaseURL, true
	}
	for _, r := range c.Retired {
		if r.CredentialsID == id && now.Before(r.RetainUntil) {
			return connect.Credentials{ClientID: r.ClientID, ClientSecret: r.ClientSecret}, r.BaseURL, true
		}
	}
	return connect.Credentials{}, "", false
}

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
				Description:  "Timeout of each HTTP request to Connect.",
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

func getConfig(ctx context.Context, s logical.Storage) (*connectConfig, error) {
	entry, err := s.Get(ctx, configStoragePath)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	if entry == nil {
		return nil, nil
	}
	cfg := new(connectConfig)
	if err := entry.DecodeJSON(cfg); err != nil {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	return cfg, nil
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	cfg, err := getConfig(ctx, req.Storage)
	if err != nil || !cfg.configured() {
		return nil, err
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
	b.configMu.Lock()
	defer b.configMu.Unlock()

	old, err := getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
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
		return logical.ErrorResponse(problem), nil
	}

	switch {
	case cfg.ClientID == "":
		return logical.ErrorResponse("client_id is required"), nil
	case len(cfg.ClientID) > maxFieldLength || hasControl(cfg.ClientID):
		return logical.ErrorResponse("client_id must be at most %d printable characters", maxFieldLength), nil
	case cfg.ClientSecret == "":
		return logical.ErrorResponse("client_secret is required"), nil
	case len(cfg.ClientSecret) > maxFieldLength:
		return logical.ErrorResponse("client_secret must be at most %d characters", maxFieldLength), nil
	case cfg.RequestTimeout <= 0 || cfg.RequestTimeout > maxRequestTimeout:
		return logical.ErrorResponse("request_timeout must be between 1s and %s", maxRequestTimeout), nil
	case cfg.MaxRetries < 0 || cfg.MaxRetries > maxMaxRetries:
		return logical.ErrorResponse("max_retries must be between 0 and %d", maxMaxRetries), nil
	case cfg.MaxConcurrentMints < 0 || cfg.MaxConcurrentMints > maxMaxConcurrentMints || (mintsGiven && cfg.MaxConcurrentMints == 0):
		return logical.ErrorResponse("max_concurrent_mints must be between 1 and %d", maxMaxConcurrentMints), nil
	}
	base, err := normalizeBaseURL(cfg.BaseURL)
	if err != nil {
		return logical.ErrorResponse("base_url: %s", err), nil
	}
	cfg.BaseURL = base

	// The stored secret was written for one client id at one host. Sending
	// it anywhere else (verify, mints, revocations) would let anyone with
	// update on config read it, so a move must bring its own secret.
	_, secretGiven := d.GetOk("client_secret")
	if old.configured() && !secretGiven && (cfg.BaseURL != old.BaseURL || cfg.ClientID != old.ClientID) {
		return logical.ErrorResponse("client_secret is required when base_url or client_id changes: the stored secret is only ever sent to the host and client id it was written with"), nil
	}

	now := b.now()
	credsChanged := !old.configured() || old.ClientID != cfg.ClientID || old.ClientSecret != cfg.ClientSecret || old.BaseURL != cfg.BaseURL
	if credsChanged {
		if old.configured() {
			retired := *old
			retired.retire(now.Add(b.retention(old)))
			cfg.Retired = retired.Retired
		}
		if cfg.CredentialsID, err = newRandomID(); err != nil {
			return nil, err
		}
	}
	cfg.Retired = pruneRetired(cfg.Retired, now)
	cfg.RenewBy = nextRenewBy(cfg.RenewBy, renewBy, renewByGiven, credsChanged)

	next, err := b.newEngine(cfg)
	if err != nil {
		return logical.ErrorResponse("base_url: %s", err), nil
	}
	if credsChanged && d.Get("verify").(bool) {
		if resp, err := b.verifyCredentials(ctx, next.client); resp != nil || err != nil {
			next.client.Close()
			return resp, err
		}
	}

	if err := putConfig(ctx, req.Storage, cfg); err != nil {
		next.client.Close()
		return nil, err
	}
	// Swap in the new client; shared tokens from other credentials are
	// skipped by their credentials id, so memory only needs clearing.
	b.publishEngine(next)
	if credsChanged {
		b.tokens.clear()
	}
	return nil, nil
}

func putConfig(ctx context.Context, s logical.Storage, cfg *connectConfig) error {
	entry, err := logical.StorageEntryJSON(configStoragePath, cfg)
	if err != nil {
		return fmt.Errorf("encoding config: %w", err)
	}
	if err := s.Put(ctx, entry); err != nil {
		return storageError("writing config", err)
	}
	return nil
}

// verifyCredentials mints (and then revokes) a client_credentials token to
// prove Connect accepts the credentials before they are saved.
func (b *backend) verifyCredentials(ctx context.Context, client *connect.Client) (*logical.Response, error) {
	ctx = b.metrics.verifyContext(ctx)
	tok, err := client.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if err != nil {
		resp, err := upstreamError(err)
		if resp != nil {
			resp.Data["error"] = "verify: " + resp.Data["error"].(string) + " (nothing was saved; write verify=false to skip this check)"
		}
		return resp, err
	}
	if err := client.Revoke(ctx, client.Credentials(), tok.AccessToken); err != nil {
		b.Logger().Warn("could not revoke the token minted to verify credentials; it expires by itself", "expires_at", tok.ExpiresAt, "error", err)
	}
	return nil, nil
}

// pathConfigDelete removes the current credentials. Exclusive tokens they
// minted may still be live at Connect, so, as a rotation does, it keeps them
// (never returned) as retired until those tokens have expired; lease
// revocations can still reach Connect, and the periodic prune drops them.
func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := getConfig(ctx, req.Storage)
	if err != nil || !cfg.configured() {
		return nil, err
	}
	now := b.now()
	cfg.retire(now.Add(b.retention(cfg)))
	cfg.Retired = pruneRetired(cfg.Retired, now)
	if err := putConfig(ctx, req.Storage, cfg); err != nil {
		return nil, err
	}
	b.resetEngine()
	return nil, nil
}

// pruneConfig drops retired credentials past their retention, and the config
// entry itself once a deleted config holds nothing more. It runs from the
// periodic function, so a deleted config's secret does not outlive its tokens.
func (b *backend) pruneConfig(ctx context.Context, s logical.Storage) (removed int, err error) {
	b.configMu.Lock()
	defer b.configMu.Unlock()
	cfg, err := getConfig(ctx, s)
	if err != nil || cfg == nil {
		return 0, err
	}
	kept := pruneRetired(cfg.Retired, b.now())
	removed = len(cfg.Retired) - len(kept)
	if removed == 0 {
		return 0, nil
	}
	cfg.Retired = kept
	if !cfg.configured() && len(kept) == 0 {
		if err := s.Delete(ctx, configStoragePath); err != nil {
			return 0, storageError("deleting config", err)
		}
	} else if err := putConfig(ctx, s, cfg); err != nil {
		return 0, err
	}
	b.publishEngine(nil) // current credentials and their shared tokens are unchanged
	return removed, nil
}

// normalizeBaseURL accepts an https URL, or http for loopback hosts only, with
// no credentials, query or fragment, and returns it without a trailing slash.
func normalizeBaseURL(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" || u.Opaque != "" {
		return "", fmt.Errorf("%q is not an absolute URL", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("must not contain credentials, a query or a fragment")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return "", fmt.Errorf("must use https:// (http:// is allowed only for loopback hosts)")
		}
	default:
		return "", fmt.Errorf("must use https://")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// newRandomID names a set of credentials or a role's incarnation.
func newRandomID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating an id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func pruneRetired(retired []retiredCredentials, now time.Time) []retiredCredentials {
	kept := retired[:0:0]
	for _, r := range retired {
		if now.Before(r.RetainUntil) {
			kept = append(kept, r)
		}
	}
	return kept
}

// hasControl reports whether s holds control characters (newlines, NUL, C1
// controls) or invisible line and direction overrides that disguise text in
// logs and consoles.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsControl(r) || r == '\u2028' || r == '\u2029' ||
			(r >= '\u202a' && r <= '\u202e') || (r >= '\u2066' && r <= '\u2069')
	})
}
