package tokensource

// This file serves a Source as an HTTP client's credentials.

import (
	"context"
	"net/http"

	"golang.org/x/oauth2"
)

// ContextTokenSource is a TokenSource that can also bound a call by a
// context, as [Source] and the sources of [Pool.TokenSource] do.
type ContextTokenSource interface {
	oauth2.TokenSource
	TokenContext(ctx context.Context) (*oauth2.Token, error)
}

// HTTPClient returns an *http.Client that sets Authorization: Bearer with a
// token from src on every request. When src is a [ContextTokenSource] (a
// [Source] is), the request's context bounds the wait for a token. Its
// transport is that of the *http.Client in ctx under [oauth2.HTTPClient], if
// any, else [http.DefaultTransport].
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
	var (
		tok *oauth2.Token
		err error
	)
	if cs, ok := t.src.(ContextTokenSource); ok {
		tok, err = cs.TokenContext(req.Context())
	} else {
		tok, err = t.src.Token()
	}
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	out := req.Clone(req.Context())
	tok.SetAuthHeader(out)
	return t.base.RoundTrip(out)
}
