// Package tokensource is an [oauth2.TokenSource] of Instacart Connect tokens
// read from Vault's Instacart secrets engine (vault-plugin-secrets-instacart).
//
// An application with a Vault client gets a token, or an *http.Client that
// sends one, in one line:
//
//	src, err := tokensource.New(vaultClient, "instacart/creds/fulfillment")
//	client := tokensource.HTTPClient(ctx, src) // sets Authorization: Bearer <token>
//
// A [Source] reads the creds path once and hands the same token to every
// caller until the token nears its expiry; then one caller re-reads it (see
// [WithEarlyRefresh]) while the others keep using the current token, which is
// still valid. So a process makes one Vault read, and creates one Vault
// lease, per token life, however many requests it sends: about one a day with
// Connect's 24-hour tokens. With the engine's default shared roles every
// reader of a role gets the same token, so Connect sees one token request per
// token life for all of them. Reading creds per request instead creates a
// lease per request.
//
// The Vault client's own token (its login and renewal) stays the
// application's business, as with any use of the Vault API client; Vault
// Agent's auto-auth or api.LifetimeWatcher can keep it alive.
//
// The module depends on github.com/hashicorp/vault/api and
// golang.org/x/oauth2 only, not on the plugin.
//
// A Source never logs or prints a token, and its errors never contain one.
package tokensource

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"golang.org/x/oauth2"
)

// DefaultEarlyRefresh is how long before a token expires a Source re-reads
// the creds path unless [WithEarlyRefresh] says otherwise. It is well inside
// the engine's default min_remaining_ttl (1h), so the re-read gets a new token
// rather than the one about to expire.
const DefaultEarlyRefresh = 5 * time.Minute

// ErrClosed is returned by [Source.Token] after [Source.Close].
var ErrClosed = errors.New("tokensource: closed")

// An Option configures a [Source].
type Option func(*Source)

// WithEarlyRefresh sets how long before a token's expiry the Source re-reads
// the creds path: d before expiry, but never earlier than when three quarters
// of the token's life (as it was when read) have passed, so that a
// short-lived token is not re-read on every call. The default is
// [DefaultEarlyRefresh]. Zero re-reads only once the token has expired.
func WithEarlyRefresh(d time.Duration) Option {
	return func(s *Source) { s.margin = d }
}

// WithUserID makes the Source write {"user_id": id} to the path instead of
// reading it. Use it with fulfillment_user_assertion roles that let the
// caller choose the user (allowed_user_ids): the token is that user's.
func WithUserID(id string) Option {
	return func(s *Source) { s.userID = id }
}

// WithRevokeOnClose makes [Source.Close] revoke the Vault leases of the
// tokens the Source read that have not yet expired, through
// PUT /v1/sys/leases/revoke. The Vault token then needs update on
// sys/leases/revoke. For an exclusive role that revokes the tokens at Connect
// too; for a shared role it only ends the leases, since others hold the token.
func WithRevokeOnClose() Option {
	return func(s *Source) { s.revokeOnClose = true }
}

// Source is an [oauth2.TokenSource] backed by a Vault creds path. It is safe
// for concurrent use. Create it with [New]; call [Source.Close] when done.
type Source struct {
	client        *api.Client
	path          string
	userID        string
	margin        time.Duration
	revokeOnClose bool
	now           func() time.Time

	ctx    context.Context // cancelled by Close, ending a read in flight
	cancel context.CancelFunc
	reads  sync.WaitGroup // the read in flight

	mu      sync.Mutex
	cur     *current
	flight  *flight   // the read in flight, shared by callers without a valid token
	retryAt time.Time // after a failed early re-read: when to try again
	leases  []lease   // leases read and not yet expired, for Close
	closed  bool
}

// current is the token being handed out.
type current struct {
	tok       *oauth2.Token
	refreshAt time.Time // when to re-read
}

// flight is one read of the creds path, shared by the callers that wait for it.
type flight struct {
	done chan struct{}
	tok  *oauth2.Token
	err  error
}

type lease struct {
	id     string
	expiry time.Time
}

var _ oauth2.TokenSource = (*Source)(nil)

// New returns a Source of tokens from path, the creds path of a role on the
// engine's mount (for example "instacart/creds/fulfillment"), read with
// client, whose address and Vault token it uses. New does not contact Vault:
// the first call to [Source.Token] does.
func New(client *api.Client, path string, opts ...Option) (*Source, error) {
	if client == nil {
		return nil, errors.New("tokensource: nil Vault client")
	}
	path = strings.Trim(strings.TrimPrefix(strings.TrimLeft(path, "/"), "v1/"), "/")
	if path == "" {
		return nil, errors.New("tokensource: empty creds path")
	}
	s := &Source{client: client, path: path, margin: DefaultEarlyRefresh, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	if s.margin < 0 {
		return nil, fmt.Errorf("tokensource: negative early refresh %v", s.margin)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Token returns the current token, reading the creds path when there is none
// yet or the current one is within its early-refresh margin. Concurrent
// callers share one read; while it runs, callers whose token is still valid
// get that token without waiting.
//
// The token's Expiry is the secret's expires_at, or the end of its Vault
// lease if that comes first (a role's ttl can cap the lease). Its Extra holds
// "scopes", "created_at", "user_id" (assertion roles), "lease_id" and
// "lease_duration" (seconds).
//
// If a re-read fails while the current token is still valid, Token returns
// that token and tries again later (after an eighth of the remaining life,
// between 1 and 30 seconds); once the token has expired, or when there is
// none, the read's error is returned. After [Source.Close], Token returns
// [ErrClosed].
func (s *Source) Token() (*oauth2.Token, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	now := s.now()
	cur := s.cur
	if cur != nil && now.Before(cur.refreshAt) {
		s.mu.Unlock()
		return clone(cur.tok), nil
	}
	valid := cur != nil && now.Before(cur.tok.Expiry)
	if f := s.flight; f != nil {
		s.mu.Unlock()
		if valid {
			return clone(cur.tok), nil
		}
		<-f.done
		return clone(f.tok), f.err
	}
	if valid && now.Before(s.retryAt) {
		s.mu.Unlock()
		return clone(cur.tok), nil
	}
	f := &flight{done: make(chan struct{})}
	s.flight = f
	s.reads.Add(1)
	s.mu.Unlock()
	defer s.reads.Done()

	tok, refreshAt, l, err := s.read()

	s.mu.Lock()
	now = s.now()
	switch {
	case err == nil:
		s.cur = &current{tok: tok, refreshAt: refreshAt}
		s.retryAt = time.Time{}
		s.leases = append(liveLeases(s.leases, now), l)
	case s.closed:
		tok, err = nil, ErrClosed
	case cur != nil && now.Before(cur.tok.Expiry):
		// The early re-read failed, but the current token still works.
		s.retryAt = now.Add(min(max(cur.tok.Expiry.Sub(now)/8, time.Second), 30*time.Second))
		tok, err = cur.tok, nil
	default:
		s.cur = nil // expired: never hand it out again
	}
	f.tok, f.err = tok, err
	s.flight = nil
	close(f.done)
	s.mu.Unlock()
	return clone(tok), err
}

// read reads (or, with a user id, writes) the creds path once.
func (s *Source) read() (tok *oauth2.Token, refreshAt time.Time, l lease, err error) {
	start := s.now()
	var sec *api.Secret
	if s.userID != "" {
		sec, err = s.client.Logical().WriteWithContext(s.ctx, s.path, map[string]any{"user_id": s.userID})
	} else {
		sec, err = s.client.Logical().ReadWithContext(s.ctx, s.path)
	}
	if err != nil {
		return nil, time.Time{}, lease{}, fmt.Errorf("tokensource: reading %s: %w", s.path, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, time.Time{}, lease{}, fmt.Errorf("tokensource: reading %s: no secret there (is the path a role's creds path?)", s.path)
	}
	access, _ := sec.Data["access_token"].(string)
	if access == "" {
		return nil, time.Time{}, lease{}, fmt.Errorf("tokensource: reading %s: the answer has no access_token", s.path)
	}
	typ, _ := sec.Data["token_type"].(string)
	if typ == "" {
		typ = "Bearer"
	}
	var expiry time.Time
	if at, ok := sec.Data["expires_at"].(string); ok && at != "" {
		if expiry, err = time.Parse(time.RFC3339, at); err != nil {
			return nil, time.Time{}, lease{}, fmt.Errorf("tokensource: reading %s: expires_at is not RFC 3339: %w", s.path, err)
		}
	}
	if sec.LeaseDuration > 0 {
		if end := start.Add(time.Duration(sec.LeaseDuration) * time.Second); expiry.IsZero() || end.Before(expiry) {
			expiry = end
		}
	}
	if expiry.IsZero() {
		return nil, time.Time{}, lease{}, fmt.Errorf("tokensource: reading %s: the answer has neither expires_at nor a lease", s.path)
	}
	now := s.now()
	life := expiry.Sub(now)
	if life <= 0 {
		return nil, time.Time{}, lease{}, fmt.Errorf("tokensource: reading %s: the token expires at %s, already past by this machine's clock (is it ahead of Vault's?)",
			s.path, expiry.UTC().Format(time.RFC3339))
	}
	extra := map[string]any{"lease_id": sec.LeaseID, "lease_duration": sec.LeaseDuration}
	for _, k := range []string{"scopes", "created_at", "user_id"} {
		if v, ok := sec.Data[k]; ok {
			extra[k] = v
		}
	}
	tok = (&oauth2.Token{AccessToken: access, TokenType: typ, Expiry: expiry}).WithExtra(extra)
	return tok, expiry.Add(-min(s.margin, life/4)), lease{id: sec.LeaseID, expiry: expiry}, nil
}

// Close stops the Source: a read in flight is cancelled and later calls to
// Token return [ErrClosed]. With [WithRevokeOnClose] it then revokes the
// leases of the tokens it read that have not expired, and returns the
// revocations' errors. Close is idempotent.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.reads.Wait()

	s.mu.Lock()
	defer s.mu.Unlock()
	leases := liveLeases(s.leases, s.now())
	s.cur, s.leases = nil, nil
	if !s.revokeOnClose {
		return nil
	}
	var errs []error
	for _, l := range leases {
		if l.id == "" {
			continue
		}
		if err := s.client.Sys().RevokeWithContext(context.Background(), l.id); err != nil {
			errs = append(errs, fmt.Errorf("tokensource: revoking lease %s: %w", l.id, err))
		}
	}
	return errors.Join(errs...)
}

// liveLeases drops the leases that have expired by now; it reuses ls.
func liveLeases(ls []lease, now time.Time) []lease {
	out := ls[:0]
	for _, l := range ls {
		if now.Before(l.expiry) {
			out = append(out, l)
		}
	}
	return out
}

// clone returns a copy of t, so callers cannot change the Source's token.
func clone(t *oauth2.Token) *oauth2.Token {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}

// HTTPClient returns an *http.Client that sets Authorization: Bearer with a
// token from src on every request. Its transport is that of the *http.Client
// in ctx under [oauth2.HTTPClient], if any, else [http.DefaultTransport].
//
// Unlike [oauth2.NewClient], it asks src for the token on every request
// instead of wrapping src in [oauth2.ReuseTokenSource], which would keep each
// token until 10 seconds before its expiry and so defeat a Source's early
// re-read. A [Source] is already cheap to ask: it holds the token in memory.
func HTTPClient(ctx context.Context, src oauth2.TokenSource) *http.Client {
	var base http.RoundTripper
	if c, ok := ctx.Value(oauth2.HTTPClient).(*http.Client); ok && c != nil {
		base = c.Transport
	}
	return &http.Client{Transport: &oauth2.Transport{Source: src, Base: base}}
}
