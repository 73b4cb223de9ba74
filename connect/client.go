// Package connect is a small client for Instacart Connect's OAuth endpoints:
// minting tokens for the three grant types and revoking them.
//
// It imports nothing from Vault, on purpose: it only speaks HTTP to Connect
// and reports what happened, precisely enough for a caller to decide what
// to do next (see Error: whether a single-use code may have been consumed,
// and which token an unusable answer left live). Policy stays with the
// caller (for the plugin, the engine in the root package): what to store,
// what to lease, what to revoke and how persistently. That keeps the client
// usable on its own, and testable with a fake Connect (connectfake) and, via
// Config.Now and Config.Sleep, a fake clock.
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
	// Token.ExpiresAt, and measures a Throttle's pause; nil uses time.Now.
	Now func() time.Time
	// Sleep waits d or until ctx ends, whichever is first, returning
	// ctx.Err() in the second case; nil uses a real timer. Every wait of the
	// client goes through it (the backoff between retries and a Throttle's
	// pause), so a test harness can pair it with a fake Now that it advances
	// and run retries and 429 pauses deterministically, without real waits.
	// An error from Sleep ends the call before the attempt it delayed, and
	// that attempt is neither sent nor counted.
	Sleep func(ctx context.Context, d time.Duration) error
	// Observer, if set, is told about every attempt (for metrics and logs).
	Observer Observer
	// Throttle, if set, is shared with other Clients, so a 429 from the
	// token endpoint to any of them holds back the token requests of all of
	// them; nil gives the Client its own. Revocations never wait on it.
	Throttle *Throttle
}

// Client talks to one Connect host with one set of current credentials.
// It is safe for concurrent use.
type Client struct {
	baseURL string
	creds   Credentials
	http    *http.Client
	// retryablehttp settings; post builds a retryablehttp.Client per call
	// around http, so its Backoff can record the wait in that call's state.
	maxRetries       int
	waitMin, waitMax time.Duration
	logger           hclog.Logger // nil: none
	now              func() time.Time
	sleep            func(context.Context, time.Duration) error
	pause            *Throttle
	obs              Observer
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
	sleep := cfg.Sleep
	if sleep == nil {
		sleep = realSleep
	}
	pause := cfg.Throttle
	if pause == nil {
		pause = new(Throttle)
	}
	return &Client{
		baseURL: strings.TrimRight(u.String(), "/"),
		creds:   cfg.Credentials,
		http: &http.Client{
			Transport: &tracingTransport{next: transport},
			Timeout:   cfg.RequestTimeout,
			// Never follow redirects: the request body carries the client secret, and
			// a 307/308 would replay it to whatever host the Location names.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		maxRetries: cfg.MaxRetries,
		waitMin:    cfg.RetryWaitMin,
		waitMax:    cfg.RetryWaitMax,
		logger:     cfg.Logger,
		now:        now,
		sleep:      sleep,
		obs:        cfg.Observer,
		pause:      pause,
	}, nil
}

// realSleep is the default Config.Sleep: a timer that gives up when ctx ends.
func realSleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// retrier is the retry loop for one call. retryablehttp itself never waits:
// st.backoff records the wait and hands it 0, and countAttempt, which runs
// before every attempt, waits through Config.Sleep (see there for why).
// It is given no logger: it would log every call at debug level, and a
// plugin's log lines all cross to Vault, whatever Vault's level, so each
// would cost both processes once per shopper. countAttempt logs retries.
func (c *Client) retrier(st *attemptState) *retryablehttp.Client {
	rc := &retryablehttp.Client{
		HTTPClient:     c.http,
		RetryWaitMin:   c.waitMin,
		RetryWaitMax:   c.waitMax,
		RetryMax:       c.maxRetries,
		CheckRetry:     retryPolicy(maxRetryAfter),
		Backoff:        st.backoff,
		RequestLogHook: countAttempt,
		// Hand the last response back to us so errors can name Connect's status and code.
		ErrorHandler: retryablehttp.PassthroughErrorHandler,
	}
	return rc
}

// Credentials returns the credentials new tokens are minted with.
func (c *Client) Credentials() Credentials { return c.creds }

// BaseURL returns the Connect host this client talks to.
func (c *Client) BaseURL() string { return c.baseURL }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Revoke revokes token at Connect using creds, which must be the credentials
// that minted it (Connect answers 403 unauthorized_client otherwise). Revoking
// an unknown or already revoked token succeeds, as Connect itself answers 200.
// It tries once plus Config.MaxRetries; retrying later, and for how long, is
// the caller's decision. A revocation never waits on the Throttle: it ends a
// live token's exposure, and a pause asked for by the token endpoint must
// not hold that back. label is handed to the Observer (Attempt.Label).
func (c *Client) Revoke(ctx context.Context, creds Credentials, token string, label any) error {
	body := map[string]string{
		"client_id":     creds.ClientID,
		"client_secret": creds.ClientSecret,
		"token":         token,
	}
	st := c.newAttemptState(EndpointRevoke, "", false, label)
	_, _, err := c.post(ctx, st, pathRevoke, body, creds)
	st.finish(ctx, err)
	return err
}

// post sends body as JSON (never as query parameters: Connect rejects
// credentials there with query_params_forbidden) with retries, and returns the
// body of a 200 response and when the attempt that got it was sent. Any other
// outcome is an *Error with credentials stripped from whatever Connect said,
// describing the last attempt (its status, whether it may have been written):
// that attempt decides whether a single-use request may have been processed,
// as one is never repeated once it may have reached Connect (see
// retryPolicy). The caller reports the last attempt with st.finish once it
// knows the outcome.
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

	resp, err := c.retrier(st).Do(req)
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
		e.Sent = true // Connect answered the last attempt, so it was written
		if wait, ok := retryAfter(resp, c.now()); ok {
			e.RetryAfter = wait
		}
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
