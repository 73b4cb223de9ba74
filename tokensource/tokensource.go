package tokensource

import (
	"context"
	"errors"
	"fmt"
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

// capSlack: a lease that ends more than this before the token's expires_at
// was capped (by the role's ttl, say) and is renewed rather than re-read.
// Vault counts lease durations in whole seconds and the engine ends a lease
// renewed to the end a second before expires_at, so a lease within a few
// seconds of it is the token's whole life.
const capSlack = 3 * time.Second

// ErrClosed is returned by [Source.Token] after [Source.Close].
var ErrClosed = errors.New("tokensource: closed")

// errNotExtended: a renewal did not move the lease's end (the role's max_ttl,
// the mount's or the Vault token's TTL caps it): read a new token instead.
var errNotExtended = errors.New("tokensource: the renewal did not extend the lease")

// Source is an [oauth2.TokenSource] backed by a Vault creds path. It is safe
// for concurrent use. Create it with [New]; call [Source.Close] when done.
type Source struct {
	client        *api.Client
	path          string
	userID        string
	margin        time.Duration
	revokeOnClose bool
	onError       func(error)
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

	// After a fresh read brought back the token Connect refused: that token
	// and when Invalidate may read again for it.
	refused      string
	refusedUntil time.Time

	joined func() // tests: an Invalidate call waits for the read in flight
}

// flight is one read of the creds path, shared by the callers that wait for it.
type flight struct {
	done     chan struct{}
	tok      *oauth2.Token
	err      error
	replaces *current // a fresh read for a refused token: that token
	healErr  error    // the fresh read brought back the refused token
}

var _ oauth2.TokenSource = (*Source)(nil)

// New returns a Source of tokens from path, the creds path of a role on the
// engine's mount (for example "instacart/creds/fulfillment"), read with
// client, whose address and Vault token it uses. New does not contact Vault:
// the first call to [Source.Token] does. The role must not be an
// authorization_code role: use an [Exchanger] for those.
func New(client *api.Client, path string, opts ...Option) (*Source, error) {
	if client == nil {
		return nil, errors.New("tokensource: nil Vault client")
	}
	path = cleanPath(path)
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

func cleanPath(path string) string {
	return strings.Trim(strings.TrimPrefix(strings.TrimLeft(path, "/"), "v1/"), "/")
}

// Token is [Source.TokenContext] with no deadline of the caller's: a cold
// read waits as long as the Vault client's timeout and retries allow.
func (s *Source) Token() (*oauth2.Token, error) {
	return s.TokenContext(context.Background())
}

// TokenContext returns the current token, reading the creds path when there
// is none yet or the current one is within its early-refresh margin.
// Concurrent callers share one read; while it runs, callers whose token is
// still valid get that token without waiting.
//
// ctx bounds how long this caller waits, not the read: when ctx ends first,
// TokenContext returns ctx's error (wrapped; errors.Is finds it), or the
// current token if it is still valid, and the read goes on, bounded by the
// Vault client's timeout and retries and by [Source.Close], so its token
// serves the callers that come next.
//
// The token's Expiry is the secret's expires_at, or the end of its Vault
// lease if that comes first (a role's ttl can cap the lease; the Source then
// renews the lease before it ends, and the same token comes back with a
// later Expiry). Its Extra holds "scopes", "created_at", "user_id"
// (assertion roles), "lease_id" and "lease_duration" (seconds).
//
// If a re-read fails while the current token is still valid, TokenContext
// returns that token and tries again later (after an eighth of the remaining
// life, between 1 and 30 seconds), and the error goes to [WithErrorHook];
// once the token has expired, or when there is none, the read's error is
// returned. After [Source.Close], it returns [ErrClosed].
func (s *Source) TokenContext(ctx context.Context) (*oauth2.Token, error) {
	if ctx == nil {
		ctx = context.Background()
	}
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
	f := s.flight
	switch {
	case f != nil && valid:
		s.mu.Unlock()
		return clone(cur.tok), nil
	case f == nil && valid && now.Before(s.retryAt):
		s.mu.Unlock()
		return clone(cur.tok), nil
	case f == nil:
		f = &flight{done: make(chan struct{})}
		s.flight = f
		s.reads.Add(1)
		go s.refresh(f, cur)
	}
	s.mu.Unlock()

	select {
	case <-f.done:
		return clone(f.tok), f.err
	case <-ctx.Done():
		if valid && s.now().Before(cur.tok.Expiry) {
			return clone(cur.tok), nil
		}
		return nil, fmt.Errorf("tokensource: reading %s: gave up waiting: %w", s.path, ctx.Err())
	}
}

// refresh renews the current token's capped lease or reads a new token, for
// the callers of flight f. For a flight that replaces a refused token, it
// revokes that token's lease first and reads past Vault Proxy's cache.
func (s *Source) refresh(f *flight, cur *current) {
	defer s.reads.Done()
	var (
		next    *current
		err     error
		notices []error
		renewed bool
		revoked string
	)
	if dead := f.replaces; dead != nil && dead.leaseID != "" {
		// The lease holds a token Connect refuses: ending it costs nothing
		// (a shared token stays with the engine; an exclusive one is dead).
		// A failure is only reported: the fresh read matters, not this.
		if rerr := revokeLease(s.ctx, s.client, dead.leaseID); rerr != nil {
			notices = append(notices, fmt.Errorf("%w (the lease of the token Connect refused; reading a new token anyway)", rerr))
		} else {
			revoked = dead.leaseID
		}
	}
	if cur != nil && cur.capped() && s.now().Before(cur.leaseEnd) {
		if next, err = s.renew(cur); err == nil {
			renewed = true
		} else if !errors.Is(err, errNotExtended) {
			notices = append(notices, fmt.Errorf("%w; reading a new token instead", err))
		}
	}
	if next == nil {
		next, err = s.read(f.replaces)
	}

	s.mu.Lock()
	now := s.now()
	if revoked != "" {
		s.leases = dropLease(s.leases, revoked)
	}
	if err == nil {
		s.leases = liveLeases(s.leases, now)
		if next.leaseID != "" { // for Close to revoke, even if closed meanwhile
			s.leases = recordLease(s.leases, lease{id: next.leaseID, expiry: next.leaseEnd}, renewed)
		}
	}
	switch {
	case s.closed:
		f.err = ErrClosed
		notices = nil
	case err == nil:
		next.refreshAt = s.refreshAt(next.tok.Expiry, now)
		s.cur = next
		s.retryAt = time.Time{}
		f.tok = next.tok
		if f.replaces != nil && next.tok.AccessToken == f.replaces.tok.AccessToken {
			s.refused, s.refusedUntil = next.tok.AccessToken, now.Add(refusedRetry)
			f.healErr = fmt.Errorf("tokensource: Connect refused the token from %s, and a fresh read returned the same token: "+
				"the engine still serves it (an operator replaces it with vault delete %s); reading again for it after %v",
				s.path, flushPath(s.path), refusedRetry)
			notices = append(notices, f.healErr)
		}
	case cur != nil && now.Before(cur.tok.Expiry):
		// The early re-read failed, but the current token still works.
		wait := min(max(cur.tok.Expiry.Sub(now)/8, time.Second), 30*time.Second)
		s.retryAt = now.Add(wait)
		f.tok = cur.tok
		notices = append(notices, fmt.Errorf("%w (serving the current token, valid until %s, and trying again in %v)",
			err, cur.tok.Expiry.UTC().Format(time.RFC3339), wait.Round(time.Second)))
	default:
		s.cur = nil // expired: never hand it out again
		f.err = err
		notices = append(notices, err)
	}
	s.flight = nil
	close(f.done)
	hook := s.onError
	s.mu.Unlock()
	if hook != nil {
		for _, n := range notices {
			hook(n)
		}
	}
}

// refreshAt is when to re-read (or renew) a token or lease that ends at end:
// the margin before it, but not before three quarters of what is left.
func (s *Source) refreshAt(end, now time.Time) time.Time {
	return end.Add(-min(s.margin, end.Sub(now)/4))
}

// Close stops the Source: a read in flight is cancelled and later calls to
// Token return [ErrClosed]. With [WithRevokeOnClose] it then revokes the
// leases of the tokens it read that have not expired, and returns the
// revocations' errors. Close is idempotent.
func (s *Source) Close() error {
	return s.shutdown(true)
}

// shutdown is Close; with cancelRead false, a read in flight is not
// cancelled but waited for, so that a lease it brings is revoked too (its
// callers get ErrClosed).
func (s *Source) shutdown(cancelRead bool) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if cancelRead {
		s.cancel()
	}
	s.reads.Wait()
	s.cancel()

	s.mu.Lock()
	defer s.mu.Unlock()
	leases := liveLeases(s.leases, s.now())
	s.cur, s.leases = nil, nil
	if !s.revokeOnClose {
		return nil
	}
	var errs []error
	for _, l := range leases {
		if err := revokeLease(context.Background(), s.client, l.id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// clone returns a copy of t, so callers cannot change the Source's token.
func clone(t *oauth2.Token) *oauth2.Token {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}
