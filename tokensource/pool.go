package tokensource

import (
	"context"
	"errors"
	"fmt"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/hashicorp/vault/api"
	"golang.org/x/oauth2"
)

// DefaultPoolSize is how many users' Sources a [Pool] keeps unless
// [NewPool] is given another size.
const DefaultPoolSize = 1000

// closeConcurrency bounds how many Sources [Pool.Close] closes at once.
const closeConcurrency = 8

// maxEvictedReads bounds how often [Pool.Token] replaces a user's Source
// that was evicted while the caller waited for its token.
const maxEvictedReads = 10

// A Pool holds one [Source] per user id for a fulfillment_user_assertion role
// that lets the caller choose the user (allowed_user_ids): each user's token
// is read once per token life, like a Source's, by writing {"user_id": id}
// to the creds path.
//
// It keeps at most size Sources: when a new user comes in and the pool is
// full, the least recently used user's Source is closed in the background,
// revoking its leases if the pool was made [WithRevokeOnClose] (errors go to
// [WithErrorHook] and to [Pool.Close]'s result); that user's next call reads
// a new token. Pick a size above the number of users active within a token's
// life, or tokens are read (and leases made) again and again.
//
// A Pool is safe for concurrent use; call [Pool.Close] when done.
type Pool struct {
	client  *api.Client
	path    string
	opts    []Option
	onError func(error)

	mu      sync.Mutex
	size    int
	sources *lru.Cache[string, *Source]
	closed  bool

	evictions sync.WaitGroup       // evicted Sources being closed
	evicting  map[*Source]struct{} // those Sources (under mu)
	errMu     sync.Mutex
	evictErr  error // the first failed close of an evicted Source
	evictErrs int   // how many failed
}

// NewPool returns a Pool of Sources for path (the creds path of an assertion
// role with allowed_user_ids, for example "instacart/creds/shoppers"), each
// made with [New] and opts plus [WithUserID]. size bounds the number of
// Sources held; 0 means [DefaultPoolSize]. NewPool does not contact Vault.
func NewPool(client *api.Client, path string, size int, opts ...Option) (*Pool, error) {
	if size < 0 {
		return nil, fmt.Errorf("tokensource: negative pool size %d", size)
	}
	if size == 0 {
		size = DefaultPoolSize
	}
	probe, err := New(client, path, opts...) // validates the options
	if err != nil {
		return nil, err
	}
	_ = probe.Close() // it read nothing: nothing to revoke
	if probe.userID != "" {
		return nil, errors.New("tokensource: a Pool sets the user id per call: do not pass WithUserID")
	}
	cache, err := lru.New[string, *Source](size)
	if err != nil {
		return nil, fmt.Errorf("tokensource: %w", err)
	}
	return &Pool{client: client, path: probe.path, opts: opts, onError: probe.onError, size: size, sources: cache,
		evicting: map[*Source]struct{}{}}, nil
}

// Token returns userID's token, as [Source.TokenContext] does for one user:
// ctx bounds the wait. After [Pool.Close] it returns [ErrClosed].
func (p *Pool) Token(ctx context.Context, userID string) (*oauth2.Token, error) {
	if userID == "" {
		return nil, errors.New("tokensource: empty user id")
	}
	for range maxEvictedReads { // a Source evicted between get and use is replaced
		src, err := p.get(userID)
		if err != nil {
			return nil, err
		}
		tok, err := src.TokenContext(ctx)
		if !errors.Is(err, ErrClosed) {
			return tok, err
		}
	}
	return nil, fmt.Errorf("tokensource: the pool evicted the user's Source %d times while its token was being read: "+
		"it is too small for the users active at once", maxEvictedReads)
}

// get returns userID's Source, making it (and evicting the least recently
// used one if the pool is full) if there is none.
func (p *Pool) get(userID string) (*Source, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	if src, ok := p.sources.Get(userID); ok && !src.isClosed() {
		return src, nil
	}
	src, err := New(p.client, p.path, append(p.opts[:len(p.opts):len(p.opts)], WithUserID(userID))...)
	if err != nil {
		return nil, err
	}
	if p.sources.Len() >= p.size && !p.sources.Contains(userID) {
		if _, old, ok := p.sources.RemoveOldest(); ok {
			p.evict(old)
		}
	}
	p.sources.Add(userID, src)
	return src, nil
}

// evict closes src in the background (p.mu held). A read in flight is let
// finish, so that its lease is revoked too; its callers get ErrClosed and
// Token gives them a new Source.
func (p *Pool) evict(src *Source) {
	p.evictions.Add(1)
	p.evicting[src] = struct{}{}
	go func() {
		defer p.evictions.Done()
		err := src.shutdown(false)
		p.mu.Lock()
		delete(p.evicting, src)
		p.mu.Unlock()
		if err == nil {
			return
		}
		p.errMu.Lock()
		if p.evictErr == nil {
			p.evictErr = err
		}
		p.evictErrs++
		p.errMu.Unlock()
		if p.onError != nil {
			p.onError(err)
		}
	}()
}

// TokenSource returns an [oauth2.TokenSource] (a [ContextTokenSource] and an
// [Invalidator]) of userID's tokens from the pool, for [HTTPClient] or any
// code that takes one. It holds no token itself: each call goes through the
// pool, so it keeps working after userID's Source was evicted.
func (p *Pool) TokenSource(userID string) ContextTokenSource {
	return userSource{p: p, userID: userID}
}

type userSource struct {
	p      *Pool
	userID string
}

func (u userSource) Token() (*oauth2.Token, error) { return u.p.Token(context.Background(), u.userID) }

func (u userSource) TokenContext(ctx context.Context) (*oauth2.Token, error) {
	return u.p.Token(ctx, u.userID)
}

func (u userSource) Invalidate(ctx context.Context, tok *oauth2.Token) error {
	return u.p.Invalidate(ctx, u.userID, tok)
}

// Invalidate tells userID's Source that Connect refused tok, as
// [Source.Invalidate] does; when the pool holds no Source for userID (it was
// evicted), tok is no one's current token and nothing is read.
func (p *Pool) Invalidate(ctx context.Context, userID string, tok *oauth2.Token) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	src, ok := p.sources.Peek(userID)
	p.mu.Unlock()
	if !ok {
		return nil
	}
	if err := src.Invalidate(ctx, tok); !errors.Is(err, ErrClosed) {
		return err
	}
	return nil // evicted meanwhile: the next Token call makes a new Source
}

// Remove closes userID's Source now, revoking its leases if the pool was
// made [WithRevokeOnClose], and returns the revocations' errors; userID's
// next call reads a new token. Use it when a user signs out.
func (p *Pool) Remove(userID string) error {
	p.mu.Lock()
	src, ok := p.sources.Peek(userID)
	if ok {
		p.sources.Remove(userID)
	}
	p.mu.Unlock()
	if !ok {
		return nil
	}
	return src.Close()
}

// Len is the number of users whose Sources the pool holds.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sources.Len()
}

// Close closes every Source in the pool, revoking their leases if it was
// made [WithRevokeOnClose], waits for the Sources evicted earlier to close,
// and returns the errors: those of this Close's revocations, and the first
// of the evicted Sources' (with how many failed). Later calls to Token
// return [ErrClosed]. Close is idempotent.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	srcs := p.sources.Values()
	p.sources.Purge()
	for src := range p.evicting {
		src.cancel() // a read an evicted Source waits for: Close does not
	}
	p.mu.Unlock()

	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, closeConcurrency)
	)
	for _, src := range srcs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := src.Close(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	p.evictions.Wait()
	p.errMu.Lock()
	if p.evictErr != nil {
		errs = append(errs, fmt.Errorf("tokensource: closing %d evicted Sources failed, the first with: %w", p.evictErrs, p.evictErr))
	}
	p.errMu.Unlock()
	return errors.Join(errs...)
}

// isClosed says whether Close has been called.
func (s *Source) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
