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

// MaxTokenLifetime is the longest expires_in we accept. Connect documents 24h
// tokens ("The token is valid for 24 hours", Get started); anything beyond a
// month is a broken response, not a policy we should lease out.
const MaxTokenLifetime = 31 * 24 * time.Hour

// TokenRequest describes one token to mint.
type TokenRequest struct {
	GrantType GrantType
	Scopes    []string // sent comma-joined as "scope"; empty = the application's defaults
	// UserID is the end user for GrantFulfillmentUserAssertion.
	UserID string
	// Code and RedirectURI are for GrantAuthorizationCode.
	Code        string
	RedirectURI string
}

// Token is a minted access token.
type Token struct {
	AccessToken string
	TokenType   string
	Scopes      []string
	CreatedAt   time.Time // as Connect reports it, clamped to our receive time
	ExpiresIn   time.Duration
	// ExpiresAt is CreatedAt+ExpiresIn, but never later than receive time +
	// ExpiresIn, so a Connect clock running ahead of ours cannot stretch a lease
	// past the token's real life.
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
	AccessToken string  `json:"access_token"`
	TokenType   string  `json:"token_type"`
	ExpiresIn   float64 `json:"expires_in"`
	CreatedAt   float64 `json:"created_at"`
	Scope       string  `json:"scope"`
}

// Token mints a token with the client's current credentials.
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

	raw, err := c.post(ctx, PathToken, body, c.creds)
	if err != nil {
		return nil, err
	}
	tok, err := parseToken(raw, c.now())
	if err != nil {
		return nil, &Error{Path: PathToken, StatusCode: 200, Code: ErrInvalidResponse, Err: err}
	}
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

// parseToken validates a 200 body from the token endpoint. received is the
// local time the response arrived.
func parseToken(raw []byte, received time.Time) (*Token, error) {
	var tr tokenResponse
	if err := json.Unmarshal(raw, &tr); err != nil {
		return nil, fmt.Errorf("decoding token response: %w", err)
	}
	if tr.AccessToken == "" {
		return nil, errors.New("token response has no access_token")
	}
	if !strings.EqualFold(tr.TokenType, "Bearer") {
		return nil, fmt.Errorf("token_type %q is not Bearer", truncate(tr.TokenType, 32))
	}
	lifetime := time.Duration(tr.ExpiresIn * float64(time.Second))
	if tr.ExpiresIn <= 0 || tr.ExpiresIn > MaxTokenLifetime.Seconds() {
		return nil, fmt.Errorf("expires_in %v is outside (0, %v]", tr.ExpiresIn, MaxTokenLifetime)
	}

	// A Connect clock ahead of ours must not stretch the token past
	// received+lifetime, so created_at is clamped to the receive time.
	created := received
	if tr.CreatedAt > 0 {
		created = time.Unix(int64(tr.CreatedAt), 0)
	}
	if created.After(received) {
		created = received
	}
	expires := created.Add(lifetime)
	if !expires.After(received) {
		return nil, fmt.Errorf("token expired on arrival (created_at %d, expires_in %v): check clocks", int64(tr.CreatedAt), tr.ExpiresIn)
	}
	return &Token{
		AccessToken: tr.AccessToken,
		TokenType:   "Bearer",
		Scopes:      SplitScopes(tr.Scope),
		CreatedAt:   created.UTC(),
		ExpiresIn:   lifetime,
		ExpiresAt:   expires.UTC(),
	}, nil
}

// SplitScopes splits a scope string on commas (what Connect documents) and
// spaces (what OAuth servers commonly return), dropping empty items.
func SplitScopes(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}
