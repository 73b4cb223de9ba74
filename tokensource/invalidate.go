package tokensource

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// Invalidate: a token Connect refused (401) is replaced once, past Vault
// Proxy's cache, and the dead lease is revoked.

// refusedRetry is how long a Source waits before reading again for a token
// Connect refused when a fresh read brought back that same token (the engine
// still serves it): one read per refusal would add a lease per request.
const refusedRetry = 30 * time.Second

// replacesHeader marks the fresh read that replaces a refused token with the
// lease it replaces. Vault ignores it; Vault Proxy's cache keys a response
// on the whole request, headers included, so the read misses the entry that
// holds the refused token, and every app behind the Proxy that replaces the
// same lease shares one new cached lease.
const replacesHeader = "X-Tokensource-Replaces-Lease"

// Invalidate tells the Source that Connect refused tok (HTTP 401: invalid,
// expired or revoked), so that it is not handed out again. If tok is still
// the current token, the Source revokes its lease (PUT
// sys/leases/revoke/<lease_id>, as app.hcl allows) and reads the creds path
// once more, past Vault Proxy's cache: the Proxy keeps answering the plain
// read with the refused token's cached lease, revoked or not. Concurrent
// calls for the same token share that one read; a call for a token already
// replaced reads nothing. A failed revocation goes to [WithErrorHook] and
// the read happens anyway.
//
// It returns nil once the current token is no longer tok: get the new one
// with [Source.TokenContext]. Otherwise it returns why: the read failed, ctx
// ended first, the Source is closed, or the fresh read brought back tok
// itself (the engine still serves a token Connect refuses: an operator's
// vault delete <mount>/cache/<role> replaces it). In that last case it
// reads again for tok only after 30 seconds, so a refused token costs at
// most one read per 30 seconds, not one per request.
//
// [HTTPClient] calls it on a 401 and retries the request once.
func (s *Source) Invalidate(ctx context.Context, tok *oauth2.Token) error {
	if tok == nil || tok.AccessToken == "" {
		return errors.New("tokensource: Invalidate: no token")
	}
	if ctx == nil {
		ctx = context.Background()
	}
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return ErrClosed
		}
		cur, f, now := s.cur, s.flight, s.now()
		isCur := cur != nil && cur.tok.AccessToken == tok.AccessToken
		switch {
		case f != nil && f.replaces != nil && f.replaces.tok.AccessToken == tok.AccessToken:
			// Its fresh read is in flight: share it.
		case !isCur:
			s.mu.Unlock()
			return nil
		case f != nil:
			// A re-read already in flight may replace tok: wait for it and
			// look again (it ends, so this waits once per read in flight).
		case tok.AccessToken == s.refused && now.Before(s.refusedUntil):
			s.mu.Unlock()
			return fmt.Errorf("tokensource: Connect refused the token from %s, which the engine still serves (an operator replaces it with vault delete %s); not reading again for it before %s",
				s.path, flushPath(s.path), s.refusedUntil.UTC().Format(time.RFC3339))
		default:
			f = &flight{done: make(chan struct{}), replaces: cur}
			s.flight = f
			s.cur = nil // callers wait for the fresh read instead of getting tok
			s.reads.Add(1)
			go s.refresh(f, nil)
		}
		joined := s.joined
		s.mu.Unlock()
		if joined != nil {
			joined()
		}

		select {
		case <-f.done:
		case <-ctx.Done():
			return fmt.Errorf("tokensource: replacing the refused token from %s: gave up waiting: %w", s.path, ctx.Err())
		}
		if f.replaces != nil && f.replaces.tok.AccessToken == tok.AccessToken {
			if f.err != nil {
				return f.err
			}
			return f.healErr
		}
	}
}

// flushPath is the engine's cache path of the role whose creds path is path,
// for messages: instacart/creds/x becomes instacart/cache/x.
func flushPath(path string) string {
	if i := strings.LastIndex(path, "/creds/"); i >= 0 {
		return path[:i] + "/cache/" + path[i+len("/creds/"):]
	}
	return "<mount>/cache/<role>"
}
