package tokensource

// This file serves a Source as an HTTP client's credentials.

import (
	"context"
	"io"
	"net/http"

	"golang.org/x/oauth2"
)

// ContextTokenSource is a TokenSource that can also bound a call by a
// context, as [Source] and the sources of [Pool.TokenSource] do.
type ContextTokenSource interface {
	oauth2.TokenSource
	TokenContext(ctx context.Context) (*oauth2.Token, error)
}

// An Invalidator can be told that Connect refused one of its tokens, as
// [Source.Invalidate] describes; [Source] and the sources of
// [Pool.TokenSource] are Invalidators.
type Invalidator interface {
	Invalidate(ctx context.Context, tok *oauth2.Token) error
}

// HTTPClient returns an *http.Client that sets Authorization: Bearer with a
// token from src on every request. When src is a [ContextTokenSource] (a
// [Source] is), the request's context bounds the wait for a token. Its
// transport is that of the *http.Client in ctx under [oauth2.HTTPClient], if
// any, else [http.DefaultTransport].
//
// When src is an [Invalidator] (a [Source] is) and Connect answers a request
// 401, the client invalidates the token (one fresh read, shared by the
// requests refused with the same token) and sends the request once more with
// the new token. A second 401 is returned as it is, never retried, and so is
// the first when no new token could be had (the reason goes to
// [WithErrorHook]) or the request's body cannot be sent again (it has no
// GetBody; requests made with [http.NewRequest] from a bytes.Buffer,
// bytes.Reader or strings.Reader have one): the next request then carries
// the new token.
//
// Unlike [oauth2.NewClient], it asks src for the token on every request
// instead of wrapping src in [oauth2.ReuseTokenSource], which would keep each
// token until 10 seconds before its expiry and so defeat a Source's early
// re-read. A [Source] is already cheap to ask: it holds the token in memory.
func HTTPClient(ctx context.Context, src oauth2.TokenSource) *http.Client {
	base := http.DefaultTransport
	if c, ok := ctx.Value(oauth2.HTTPClient).(*http.Client); ok && c != nil && c.Transport != nil {
		base = c.Transport
	}
	return &http.Client{Transport: &transport{src: src, base: base}}
}

// transport sets the Authorization header from src.
type transport struct {
	src  oauth2.TokenSource
	base http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := t.token(req)
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	resp, err := t.send(req, req.Body, tok)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	inv, ok := t.src.(Invalidator)
	if !ok {
		return resp, nil
	}
	if inv.Invalidate(req.Context(), tok) != nil { // why goes to the error hook
		return resp, nil
	}
	var retryBody io.ReadCloser = http.NoBody
	if req.Body != nil && req.Body != http.NoBody {
		if req.GetBody == nil {
			return resp, nil // the next request gets the new token
		}
		if retryBody, err = req.GetBody(); err != nil {
			return resp, nil
		}
	}
	next, err := t.token(req)
	if err != nil || next.AccessToken == tok.AccessToken {
		retryBody.Close()
		return resp, nil
	}
	// Drain a little so the connection can be reused, then drop the 401.
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
	return t.send(req, retryBody, next)
}

// token asks src for a token, bounded by the request's context if it can be.
func (t *transport) token(req *http.Request) (*oauth2.Token, error) {
	if cs, ok := t.src.(ContextTokenSource); ok {
		return cs.TokenContext(req.Context())
	}
	return t.src.Token()
}

// send sends a copy of req with body and tok's Authorization header.
func (t *transport) send(req *http.Request, body io.ReadCloser, tok *oauth2.Token) (*http.Response, error) {
	out := req.Clone(req.Context())
	out.Body = body
	tok.SetAuthHeader(out)
	return t.base.RoundTrip(out)
}
