// Package connect is a small client for Instacart Connect's OAuth endpoints:
// minting tokens for the three grant types and revoking them. It has no Vault
// dependencies so an application could use it on its own.
package connect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-retryablehttp"
)

// Connect endpoints, from Instacart's "Get started" and "Generate a linking token" pages.
const (
	pathToken  = "/v2/oauth/token"
	pathRevoke = "/v2/oauth/token/revoke"
)

// Defaults: for Config fields left zero, except MaxRetries (0 means none).
const (
	// DefaultBaseURL is Instacart's production Connect host.
	DefaultBaseURL        = "https://connect.instacart.com"
	DefaultRequestTimeout = 10 * time.Second
	DefaultMaxRetries     = 3

	// maxResponseBytes bounds what we read from Connect; token responses are ~200 bytes.
	maxResponseBytes = 64 << 10
	userAgent        = "vault-plugin-secrets-instacart"
)

// Credentials are an Instacart Connect application's client id and secret.
type Credentials struct {
	ClientID     string
	ClientSecret string
}

// Config configures a Client. Zero values take the defaults above, except
// MaxRetries, where 0 means no retries.
type Config struct {
	BaseURL        string
	Credentials    Credentials
	RequestTimeout time.Duration // per HTTP attempt
	// MaxRetries is how many times a transient failure is retried after the
	// first attempt; 0 means none (DefaultMaxRetries is a good value).
	MaxRetries int
	// RetryWaitMin and RetryWaitMax bound the exponential backoff between retries
	// when Connect sends no Retry-After (defaults 250ms and 10s).
	RetryWaitMin, RetryWaitMax time.Duration
	// Transport is the HTTP transport to use; nil uses a private pooled transport.
	Transport http.RoundTripper
	Logger    hclog.Logger
	// Now is the client's clock, which stamps Token.RequestedAt and so
	// Token.ExpiresAt; nil uses time.Now.
	Now func() time.Time
	// Observer, if set, is told about every attempt (for metrics and logs).
	Observer Observer
	// Throttle, if set, is shared with other Clients, so a 429 to any of
	// them holds back all of them; nil gives the Client its own.
	Throttle *Throttle
}

// Client talks to one Connect host with one set of current credentials.
// It is safe for concurrent use.
type Client struct {
	baseURL string
	creds   Credentials
	http    *retryablehttp.Client
	now     func() time.Time
	pause   *Throttle
	obs     Observer
}

// New validates cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	base := cfg.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("connect: invalid base URL %q", base)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MaxRetries < 0 {
		return nil, fmt.Errorf("connect: MaxRetries %d is negative", cfg.MaxRetries)
	}
	if cfg.RetryWaitMin <= 0 {
		cfg.RetryWaitMin = 250 * time.Millisecond
	}
	if cfg.RetryWaitMax <= 0 {
		cfg.RetryWaitMax = 10 * time.Second
	}
	transport := cfg.Transport
	if transport == nil {
		transport = newTransport()
	}

	now := cfg.Now
	if now == nil {
		now = time.Now
	}

	rc := retryablehttp.NewClient()
	rc.HTTPClient = &http.Client{
		Transport: &tracingTransport{next: transport},
		Timeout:   cfg.RequestTimeout,
		// Never follow redirects: the request body carries the client secret, and
		// a 307/308 would replay it to whatever host the Location names.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	rc.RetryMax = cfg.MaxRetries
	rc.RetryWaitMin = cfg.RetryWaitMin
	rc.RetryWaitMax = cfg.RetryWaitMax
	rc.CheckRetry = retryPolicy(maxRetryAfter)
	rc.Backoff = backoff
	rc.RequestLogHook = countAttempt
	// Hand the last response back to us so errors can name Connect's status and code.
	rc.ErrorHandler = retryablehttp.PassthroughErrorHandler
	rc.Logger = nil
	if cfg.Logger != nil {
		rc.Logger = debugLogger{cfg.Logger}
	}

	pause := cfg.Throttle
	if pause == nil {
		pause = new(Throttle)
	}
	return &Client{
		baseURL: strings.TrimRight(u.String(), "/"),
		creds:   cfg.Credentials,
		http:    rc,
		now:     now,
		obs:     cfg.Observer,
		pause:   pause,
	}, nil
}

// Credentials returns the credentials new tokens are minted with.
func (c *Client) Credentials() Credentials { return c.creds }

// BaseURL returns the Connect host this client talks to.
func (c *Client) BaseURL() string { return c.baseURL }

// Close releases idle connections.
func (c *Client) Close() { c.http.HTTPClient.CloseIdleConnections() }

// Revoke revokes token at Connect using creds, which must be the credentials
// that minted it (Connect answers 403 unauthorized_client otherwise). Revoking
// an unknown or already revoked token succeeds, as Connect itself answers 200.
func (c *Client) Revoke(ctx context.Context, creds Credentials, token string) error {
	body := map[string]string{
		"client_id":     creds.ClientID,
		"client_secret": creds.ClientSecret,
		"token":         token,
	}
	st := c.newAttemptState(EndpointRevoke, "", false)
	_, _, err := c.post(ctx, st, pathRevoke, body, creds)
	st.finish(ctx, err)
	return err
}

// post sends body as JSON (never as query parameters: Connect rejects
// credentials there with query_params_forbidden) with retries, and returns the
// body of a 200 response and when the attempt that got it was sent. Any other outcome is an *Error with credentials
// stripped from whatever Connect said. A single-use request (st.singleUse) is
// never repeated once it may have reached Connect (see retryPolicy). The
// caller reports the last attempt with st.finish once it knows the outcome.
func (c *Client) post(ctx context.Context, st *attemptState, path string, body any, creds Credentials) ([]byte, time.Time, error) {
	payload, err := json.Marshal(body)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("connect: encoding request: %w", err)
	}
	req, err := retryablehttp.NewRequestWithContext(withAttemptState(ctx, st), http.MethodPost, c.baseURL+path, payload)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("connect: building request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)

	// Read the body inside the retry loop so a connection cut mid-body is
	// retried like any other network error.
	var respBody []byte
	req.SetResponseHandler(func(resp *http.Response) error {
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
		if err != nil {
			return fmt.Errorf("reading response: %w", err)
		}
		respBody = b
		return nil
	})

	resp, err := c.http.Do(req)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
		}
		attempts, status, sent := st.snapshot()
		return nil, time.Time{}, &Error{Path: path, StatusCode: status, Attempts: attempts, Sent: sent, Err: scrub(err, creds)}
	}
	if resp.StatusCode != http.StatusOK {
		if respBody == nil { // retries ran out on a retryable status: the handler never read it
			respBody, _ = io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
			resp.Body.Close()
		}
		attempts, _, _ := st.snapshot()
		e := newStatusError(path, resp, respBody, attempts, creds)
		e.Sent = true // Connect answered, so it was written
		return nil, time.Time{}, e
	}
	return respBody, st.startedAt(), nil
}

// scrub removes the client secret from an error's text, in case a transport
// error ever echoes request content.
func scrub(err error, creds Credentials) error {
	if err == nil || creds.ClientSecret == "" || !strings.Contains(err.Error(), creds.ClientSecret) {
		return err
	}
	return errors.New(redact(err.Error(), creds))
}

// redact replaces the client secret in s.
func redact(s string, creds Credentials) string {
	if creds.ClientSecret == "" {
		return s
	}
	return strings.ReplaceAll(s, creds.ClientSecret, "[redacted]")
}
