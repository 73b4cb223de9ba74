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

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// Bounds on operator input: a timeout past a few minutes or dozens of retries
// would hold Vault requests hostage to a failing Connect.
const (
	maxRequestTimeout = 5 * time.Minute
	maxMaxRetries     = 10
	maxFieldLength    = 1024
	// maxMaxConcurrentMints: beyond this the bound protects nothing.
	maxMaxConcurrentMints = 1024
)

const configStoragePath = "config"

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

// keeps reports whether c keeps credentials id until at least t: they are
// the current ones, or retired ones retained that long.
func (c *connectConfig) keeps(id string, t time.Time) bool {
	if c == nil {
		return false
	}
	if id == c.CredentialsID && c.configured() {
		return true
	}
	for _, r := range c.Retired {
		if r.CredentialsID == id {
			return !r.RetainUntil.Before(t)
		}
	}
	return false
}

// retainUntil extends the retention of retired credentials id to t, and
// reports whether that changed c (not when they are current, already kept
// that long, or no longer kept).
func (c *connectConfig) retainUntil(id string, t time.Time) bool {
	if c == nil || (id == c.CredentialsID && c.configured()) {
		return false
	}
	for i := range c.Retired {
		if r := &c.Retired[i]; r.CredentialsID == id && r.RetainUntil.Before(t) {
			r.RetainUntil = t
			return true
		}
	}
	return false
}

func getConfig(ctx context.Context, s logical.Storage) (*connectConfig, error) {
	return getJSON[connectConfig](ctx, s, configStoragePath)
}

func putConfig(ctx context.Context, s logical.Storage, cfg *connectConfig) error {
	return putJSON(ctx, s, configStoragePath, cfg)
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
	b.publishSnapshot(nil) // current credentials and their shared tokens are unchanged
	return removed, nil
}
