package connect

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// GrantType is one of the OAuth grants Connect's token endpoint accepts.
type GrantType string

const (
	// GrantClientCredentials mints server-to-server tokens.
	GrantClientCredentials GrantType = "client_credentials"
	// GrantFulfillmentUserAssertion mints a token for one end user (Recommendations API).
	GrantFulfillmentUserAssertion GrantType = "fulfillment_user_assertion"
	// GrantAuthorizationCode exchanges a single-use code for an account-linking token.
	GrantAuthorizationCode GrantType = "authorization_code"
)

// Valid reports whether g is a grant Connect supports.
func (g GrantType) Valid() bool {
	switch g {
	case GrantClientCredentials, GrantFulfillmentUserAssertion, GrantAuthorizationCode:
		return true
	}
	return false
}

// maxTokenLifetime is the longest expires_in we accept. Connect documents 24h
// tokens ("The token is valid for 24 hours", Get started); anything beyond a
// month is a broken response, not a policy we should lease out.
const maxTokenLifetime = 31 * 24 * time.Hour

// documentedLifetime is the lifetime Connect documents for its tokens: how
// long a token named in an unusable answer is assumed live when the answer's
// own expires_in cannot be trusted.
const documentedLifetime = 24 * time.Hour

// TokenRequest describes one token to mint.
type TokenRequest struct {
	GrantType GrantType
	Scopes    []string // sent comma-joined as "scope"; empty = the application's defaults
	// UserID is the end user for GrantFulfillmentUserAssertion.
	UserID string
	// Code and RedirectURI are for GrantAuthorizationCode.
	Code        string
	RedirectURI string
	// Label is handed to the Observer with each attempt (Attempt.Label).
	Label any
}

// Token is a minted access token.
type Token struct {
	AccessToken string
	TokenType   string
	Scopes      []string
	// CreatedAt is Connect's created_at, for information only: a Doorkeeper
	// server that hands out an existing token reports when it was first
	// created. Never later than RequestedAt.
	CreatedAt time.Time
	// RequestedAt is when the request that got the answer was sent, by the
	// client's clock (Config.Now). expires_in counts from the answer (RFC 6749
	// §5.1), which came later, so counting from here never overstates a life.
	RequestedAt time.Time
	// ExpiresIn is the lifetime left from RequestedAt (Connect's expires_in).
	ExpiresIn time.Duration
	// ExpiresAt is RequestedAt+ExpiresIn: expires_in counts from the response
	// (RFC 6749 §5.1), so neither created_at nor Connect's clock moves it.
	ExpiresAt time.Time
}

// tokenRequestBody is the JSON body of POST /v2/oauth/token.
type tokenRequestBody struct {
	ClientID     string    `json:"client_id"`
	ClientSecret string    `json:"client_secret"`
	GrantType    GrantType `json:"grant_type"`
	Scope        string    `json:"scope,omitempty"`
	Assertion    string    `json:"assertion,omitempty"`
	Code         string    `json:"code,omitempty"`
	RedirectURI  string    `json:"redirect_uri,omitempty"`
}

type tokenResponse struct {
	AccessToken string   `json:"access_token"`
	TokenType   string   `json:"token_type"`
	ExpiresIn   float64  `json:"expires_in"`
	CreatedAt   *float64 `json:"created_at"`
	Scope       string   `json:"scope"`
}

// maxCreatedAt bounds created_at (in 2242): beyond it the field is garbage,
// not clock skew.
const maxCreatedAt = 1 << 33

// Token mints a token with the client's current credentials. Any failure is
// an *Error: its Unprocessed says whether a single-use authorization code
// may still be sent again, and after a 200 the client cannot use, its
// UnusableToken hands over the token Connect minted anyway, which Token does
// not revoke itself (revoking, persistently, is the caller's job).
func (c *Client) Token(ctx context.Context, r TokenRequest) (*Token, error) {
	if !r.GrantType.Valid() {
		return nil, fmt.Errorf("connect: unsupported grant type %q", r.GrantType)
	}
	body := tokenRequestBody{
		ClientID:     c.creds.ClientID,
		ClientSecret: c.creds.ClientSecret,
		GrantType:    r.GrantType,
		Scope:        strings.Join(r.Scopes, ","),
	}
	switch r.GrantType {
	case GrantFulfillmentUserAssertion:
		if r.UserID == "" {
			return nil, errors.New("connect: a user id is required for the fulfillment_user_assertion grant")
		}
		body.Assertion = Assertion(r.UserID)
	case GrantAuthorizationCode:
		if r.Code == "" || r.RedirectURI == "" {
			return nil, errors.New("connect: code and redirect URI are required for the authorization_code grant")
		}
		body.Code, body.RedirectURI = r.Code, r.RedirectURI
	}

	st := c.newAttemptState(EndpointToken, r.GrantType, r.GrantType == GrantAuthorizationCode, r.Label)
	raw, sent, err := c.post(ctx, st, pathToken, body, c.creds)
	if err != nil {
		st.finish(ctx, err)
		return nil, err
	}
	// Counting expires_in from when the request was sent, not when the body
	// was read, keeps the lease inside the token's life whatever the latency.
	tok, unusable, err := parseToken(raw, sent)
	if err != nil {
		// A token the answer named is handed to the caller (UnusableToken),
		// not revoked here: revoking is the caller's, with its own retries.
		attempts, _, _ := st.snapshot()
		ce := &Error{Path: pathToken, StatusCode: 200, Code: ErrInvalidResponse, Attempts: attempts, Sent: true, Err: err, unusable: unusable}
		st.finish(ctx, ce)
		return nil, ce
	}
	st.finish(ctx, nil)
	return tok, nil
}

// Assertion encodes a user id the way the fulfillment_user_assertion grant
// expects: standard base64 of the JSON object {"user_id": "<id>"}. Marshalling
// (rather than formatting a string) keeps ids with quotes or backslashes valid JSON.
func Assertion(userID string) string {
	b, _ := json.Marshal(struct {
		UserID string `json:"user_id"`
	}{userID})
	return base64.StdEncoding.EncodeToString(b)
}

// parseToken validates a 200 body from the token endpoint. requested is the
// local time the request that got it was sent. When the body is unusable but
// names a token, unusable is that token, for the caller to revoke.
func parseToken(raw []byte, requested time.Time) (tok, unusable *Token, err error) {
	named := namedToken(raw, requested)
	var tr tokenResponse
	if err := json.Unmarshal(raw, &tr); err != nil {
		return nil, named, fmt.Errorf("decoding token response: %w", err)
	}
	if tr.AccessToken == "" {
		return nil, nil, errors.New("token response has no access_token")
	}
	if !strings.EqualFold(tr.TokenType, "Bearer") {
		// Quote only what is short and not part of the token: errors end up in logs.
		if len(tr.TokenType) > 16 || tr.TokenType != "" && strings.Contains(tr.AccessToken, tr.TokenType) {
			return nil, named, fmt.Errorf("token_type (%d bytes) is not Bearer", len(tr.TokenType))
		}
		return nil, named, fmt.Errorf("token_type %q is not Bearer", tr.TokenType)
	}
	if !(tr.ExpiresIn > 0 && tr.ExpiresIn <= maxTokenLifetime.Seconds()) {
		return nil, named, fmt.Errorf("expires_in %v is outside (0, %v]", tr.ExpiresIn, maxTokenLifetime)
	}
	lifetime := time.Duration(tr.ExpiresIn * float64(time.Second))

	// created_at is informational: a Doorkeeper server reusing a token sends
	// the original one with the remaining expires_in. A Connect clock ahead
	// of ours is clamped so CreatedAt never follows RequestedAt.
	created := requested
	if tr.CreatedAt != nil && *tr.CreatedAt != 0 {
		if *tr.CreatedAt < 0 || *tr.CreatedAt > maxCreatedAt {
			return nil, named, fmt.Errorf("created_at %v is not a Unix time", *tr.CreatedAt)
		}
		created = time.Unix(int64(*tr.CreatedAt), 0)
	}
	if created.After(requested) {
		created = requested
	}
	return &Token{
		AccessToken: tr.AccessToken,
		TokenType:   "Bearer",
		Scopes:      splitScopes(tr.Scope),
		CreatedAt:   created.UTC(),
		RequestedAt: requested.UTC(),
		ExpiresIn:   lifetime,
		ExpiresAt:   requested.Add(lifetime).UTC(),
	}, nil, nil
}

// namedToken reads the token a 200 body names, if any, and how long it
// lives, each field on its own: a body that names a token but is wrong
// elsewhere (even in a field's type) still minted it. An unusable expires_in
// gives way to the documented lifetime.
func namedToken(raw []byte, requested time.Time) *Token {
	var head struct {
		AccessToken string `json:"access_token"`
	}
	if json.Unmarshal(raw, &head) != nil || head.AccessToken == "" {
		return nil
	}
	lifetime := documentedLifetime
	var life struct {
		ExpiresIn float64 `json:"expires_in"`
	}
	if json.Unmarshal(raw, &life) == nil && life.ExpiresIn > 0 && life.ExpiresIn <= maxTokenLifetime.Seconds() {
		lifetime = time.Duration(life.ExpiresIn * float64(time.Second))
	}
	return &Token{
		AccessToken: head.AccessToken,
		RequestedAt: requested.UTC(),
		ExpiresIn:   lifetime,
		ExpiresAt:   requested.Add(lifetime).UTC(),
	}
}

// splitScopes splits a scope string on commas (what Connect documents) and
// spaces (what OAuth servers commonly return), dropping empty items.
func splitScopes(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}
