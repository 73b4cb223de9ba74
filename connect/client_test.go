package connect_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

const (
	testClientID = "test-client"
	// testSecret is a throwaway value for the in-process fake.
	testSecret = "fake-secret-for-tests-0123456789"
)

func newFake(t *testing.T) *connectfake.Server {
	t.Helper()
	fake := connectfake.New()
	t.Cleanup(fake.Close)
	fake.AddClient(testClientID, testSecret)
	return fake
}

func newClient(t *testing.T, fake *connectfake.Server, mod func(*connect.Config)) *connect.Client {
	t.Helper()
	cfg := connect.Config{
		BaseURL:        fake.URL,
		Credentials:    connect.Credentials{ClientID: testClientID, ClientSecret: testSecret},
		RequestTimeout: 2 * time.Second,
		MaxRetries:     3,
		RetryWaitMin:   10 * time.Millisecond,
		RetryWaitMax:   100 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := connect.New(cfg)
	if err != nil {
		t.Fatalf("connect.New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestTokenGrants(t *testing.T) {
	fake := newFake(t)
	c := newClient(t, fake, nil)
	ctx := context.Background()

	code := fake.IssueAuthorizationCode(testClientID, "https://example.com/cb", "linked-user")
	tests := []struct {
		name       string
		req        connect.TokenRequest
		wantScopes []string
		wantUser   string
	}{
		{"client credentials, default scopes", connect.TokenRequest{GrantType: connect.GrantClientCredentials}, []string{"connect:fulfillment"}, ""},
		{"client credentials, two scopes", connect.TokenRequest{GrantType: connect.GrantClientCredentials, Scopes: []string{"connect:fulfillment", "connect:ian"}}, []string{"connect:fulfillment", "connect:ian"}, ""},
		{"user assertion", connect.TokenRequest{GrantType: connect.GrantFulfillmentUserAssertion, Scopes: []string{"connect:recommendations"}, UserID: "kamalsingh1234"}, []string{"connect:recommendations"}, "kamalsingh1234"},
		{"user assertion, JSON-hostile user id", connect.TokenRequest{GrantType: connect.GrantFulfillmentUserAssertion, Scopes: []string{"connect:recommendations"}, UserID: "a\"b\\c\nd"}, []string{"connect:recommendations"}, "a\"b\\c\nd"},
		{"authorization code", connect.TokenRequest{GrantType: connect.GrantAuthorizationCode, Scopes: []string{"account_linking"}, Code: code, RedirectURI: "https://example.com/cb"}, []string{"account_linking"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now()
			tok, err := c.Token(ctx, tc.req)
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if len(tok.AccessToken) != 43 || tok.TokenType != "Bearer" {
				t.Errorf("token shape: len %d, type %q", len(tok.AccessToken), tok.TokenType)
			}
			if strings.Join(tok.Scopes, ",") != strings.Join(tc.wantScopes, ",") {
				t.Errorf("scopes = %v, want %v", tok.Scopes, tc.wantScopes)
			}
			if d := tok.ExpiresAt.Sub(before.Add(24 * time.Hour)); d < -2*time.Second || d > 2*time.Second {
				t.Errorf("expires_at %v is not 24h after the request (off by %v)", tok.ExpiresAt, d)
			}
			info, ok := fake.Token(tok.AccessToken)
			if !ok || !fake.TokenLive(tok.AccessToken) {
				t.Fatalf("fake does not know the token as live")
			}
			if info.GrantType != string(tc.req.GrantType) || info.UserID != tc.wantUser && tc.wantUser != "" {
				t.Errorf("fake recorded grant %q user %q", info.GrantType, info.UserID)
			}
		})
	}
}

func TestRequestIsJSONBodyNeverQuery(t *testing.T) {
	fake := newFake(t)
	c := newClient(t, fake, nil)
	if _, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantFulfillmentUserAssertion, Scopes: []string{"connect:recommendations", "connect:post_checkout"}, UserID: "u1"}); err != nil {
		t.Fatal(err)
	}
	rec := fake.LastRequest(connect.PathToken)
	if rec.RawQuery != "" {
		t.Errorf("query string sent: %q", rec.RawQuery)
	}
	if rec.ContentType != "application/json" {
		t.Errorf("content type %q", rec.ContentType)
	}
	var body map[string]string
	if err := json.Unmarshal(rec.Body, &body); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	if body["scope"] != "connect:recommendations,connect:post_checkout" {
		t.Errorf("scope sent as %q, want comma-joined", body["scope"])
	}
	raw, err := base64.StdEncoding.DecodeString(body["assertion"])
	if err != nil {
		t.Fatalf("assertion is not standard base64: %v", err)
	}
	var assertion map[string]string
	if err := json.Unmarshal(raw, &assertion); err != nil || assertion["user_id"] != "u1" || len(assertion) != 1 {
		t.Errorf("assertion decodes to %q (%v)", raw, err)
	}
}

func TestAssertionIsJSONForAnyUserID(t *testing.T) {
	for _, id := range []string{"kamalsingh1234", `quote"`, `back\slash`, "new\nline", "ünïcödé", "</script>", "\u2028"} {
		raw, err := base64.StdEncoding.DecodeString(connect.Assertion(id))
		if err != nil {
			t.Fatalf("%q: %v", id, err)
		}
		var v struct {
			UserID string `json:"user_id"`
		}
		if err := json.Unmarshal(raw, &v); err != nil || v.UserID != id {
			t.Errorf("%q: assertion %s decodes to %q (%v)", id, raw, v.UserID, err)
		}
	}
}

func TestRetriesTransientFailures(t *testing.T) {
	tests := []struct {
		name   string
		faults []connectfake.Fault
	}{
		{"429 with Retry-After seconds", []connectfake.Fault{{Status: 429, RetryAfter: "1"}}},
		{"503 with Retry-After date (second granularity: waits 1-2s)", []connectfake.Fault{{Status: 503, RetryAfter: "date"}}},
		{"429 without Retry-After", []connectfake.Fault{{Status: 429}}},
		{"408, 500, 502", []connectfake.Fault{{Status: 408}, {Status: 500}, {Status: 502}}},
		{"504 then connection reset", []connectfake.Fault{{Status: 504}, {Reset: true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(t)
			c := newClient(t, fake, nil)
			start := time.Now()
			for i, f := range tc.faults {
				if f.RetryAfter == "date" { // computed now: earlier subtests take seconds
					tc.faults[i].RetryAfter = start.Add(2 * time.Second).UTC().Format(http.TimeFormat)
				}
			}
			fake.InjectFaults(connect.PathToken, tc.faults...)
			tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
			if err != nil {
				t.Fatalf("Token after %d faults: %v", len(tc.faults), err)
			}
			if !fake.TokenLive(tok.AccessToken) {
				t.Error("token not live")
			}
			if got, want := fake.Requests(connect.PathToken), len(tc.faults)+1; got != want {
				t.Errorf("requests = %d, want %d", got, want)
			}
			if tc.faults[0].RetryAfter != "" && time.Since(start) < 900*time.Millisecond {
				t.Errorf("retried after %v, before Retry-After", time.Since(start))
			}
		})
	}
}

func TestGivesUpAfterMaxRetries(t *testing.T) {
	fake := newFake(t)
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.MaxRetries = 2 })
	fake.InjectFaults(connect.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	ce, ok := connect.AsError(err)
	if !ok || ce.StatusCode != 503 || !ce.Temporary() || ce.Attempts != 3 {
		t.Fatalf("err = %#v", err)
	}
	if got := fake.Requests(connect.PathToken); got != 3 {
		t.Errorf("requests = %d, want 3", got)
	}
	if !strings.Contains(err.Error(), "503") {
		t.Errorf("error does not name the status: %v", err)
	}
}

func TestNoRetryOnClientErrors(t *testing.T) {
	tests := []struct {
		name     string
		secret   string
		req      connect.TokenRequest
		status   int
		code     string
		rejected bool
	}{
		{"wrong secret", "wrong-secret", connect.TokenRequest{GrantType: connect.GrantClientCredentials}, 401, connect.ErrInvalidClient, true},
		{"bad scope", testSecret, connect.TokenRequest{GrantType: connect.GrantClientCredentials, Scopes: []string{"account_linking"}}, 400, connect.ErrInvalidScope, false},
		{"used code", testSecret, connect.TokenRequest{GrantType: connect.GrantAuthorizationCode, Code: "not-a-code", RedirectURI: "https://example.com/cb"}, 400, connect.ErrInvalidGrant, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake(t)
			c := newClient(t, fake, func(cfg *connect.Config) { cfg.Credentials.ClientSecret = tc.secret })
			_, err := c.Token(context.Background(), tc.req)
			ce, ok := connect.AsError(err)
			if !ok || ce.StatusCode != tc.status || ce.Code != tc.code || ce.Temporary() || ce.CredentialsRejected() != tc.rejected {
				t.Fatalf("err = %#v", err)
			}
			if got := fake.Requests(connect.PathToken); got != 1 {
				t.Errorf("requests = %d, want exactly 1 (no retry)", got)
			}
			if strings.Contains(err.Error(), tc.secret) {
				t.Error("error contains the client secret")
			}
		})
	}
}

func TestQueryParamsForbiddenIsNotRetried(t *testing.T) {
	fake := newFake(t)
	c := newClient(t, fake, nil)
	fake.InjectFaults(connect.PathToken, connectfake.Fault{Status: 403, Body: `{"error":"query_params_forbidden","error_description":"Providing OAuth credentials as query parameters may cause them to be compromised. Please ensure the credentials are rotated."}`})
	_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	ce, ok := connect.AsError(err)
	if !ok || ce.Code != connect.ErrQueryParamsForbidden || !ce.CredentialsRejected() {
		t.Fatalf("err = %v", err)
	}
	if got := fake.Requests(connect.PathToken); got != 1 {
		t.Errorf("requests = %d, want 1", got)
	}
}

func TestHungUpstreamReturnsWithinDeadline(t *testing.T) {
	fake := newFake(t)
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.RequestTimeout = 10 * time.Second })
	fake.InjectFaults(connect.PathToken, connectfake.Fault{Hang: true}, connectfake.Fault{Hang: true})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if err == nil {
		t.Fatal("expected an error")
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("returned after %v, deadline was 300ms", elapsed)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want deadline exceeded", err)
	}
}

func TestRequestTimeoutBoundsEachAttempt(t *testing.T) {
	fake := newFake(t)
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.RequestTimeout = 200 * time.Millisecond; cfg.MaxRetries = 1 })
	fake.InjectFaults(connect.PathToken, connectfake.Fault{Hang: true})
	start := time.Now()
	tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if err != nil {
		t.Fatalf("second attempt should succeed: %v", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("took %v", elapsed)
	}
	if !fake.TokenLive(tok.AccessToken) {
		t.Error("token not live")
	}
}

func TestMalformedSuccessResponses(t *testing.T) {
	bodies := map[string]string{
		"malformed JSON":     `{"access_token":`,
		"truncated JSON":     `{"access_token":"abc","token_type":"Bearer","expires_in":864`,
		"HTML error page":    `<html><body>Bad Gateway</body></html>`,
		"JSON array":         `[]`,
		"no token":           `{"token_type":"Bearer","expires_in":86400,"created_at":1}`,
		"expires_in zero":    `{"access_token":"abc","token_type":"Bearer","expires_in":0}`,
		"expires_in < 0":     `{"access_token":"abc","token_type":"Bearer","expires_in":-5}`,
		"expires_in absurd":  `{"access_token":"abc","token_type":"Bearer","expires_in":1e12}`,
		"not bearer":         `{"access_token":"abc","token_type":"mac","expires_in":86400}`,
		"expired on arrival": `{"access_token":"abc","token_type":"Bearer","expires_in":60,"created_at":1000}`,
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			fake := newFake(t)
			c := newClient(t, fake, func(cfg *connect.Config) { cfg.MaxRetries = -1 })
			fake.InjectFaults(connect.PathToken, connectfake.Fault{Status: 200, Body: body})
			tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
			ce, ok := connect.AsError(err)
			if tok != nil || !ok || ce.Code != connect.ErrInvalidResponse {
				t.Fatalf("tok=%v err=%v", tok, err)
			}
		})
	}
}

func TestClockSkewNeverExtendsExpiry(t *testing.T) {
	for _, skew := range []time.Duration{time.Hour, -time.Hour} {
		fake := newFake(t)
		fake.SetClockSkew(skew)
		c := newClient(t, fake, nil)
		before := time.Now()
		tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
		if err != nil {
			t.Fatal(err)
		}
		limit := time.Now().Add(24 * time.Hour)
		if tok.ExpiresAt.After(limit) {
			t.Errorf("skew %v: expiry %v is past receive time + expires_in %v", skew, tok.ExpiresAt, limit)
		}
		if skew < 0 && tok.ExpiresAt.After(before.Add(23*time.Hour+time.Second)) {
			t.Errorf("skew %v: expiry %v ignores Connect's earlier created_at", skew, tok.ExpiresAt)
		}
	}
}

func TestRevoke(t *testing.T) {
	fake := newFake(t)
	c := newClient(t, fake, nil)
	ctx := context.Background()
	tok, err := c.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if err != nil {
		t.Fatal(err)
	}
	creds := c.Credentials()
	if err := c.Revoke(ctx, creds, tok.AccessToken); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if fake.TokenLive(tok.AccessToken) {
		t.Error("token still live after revoke")
	}
	// Unknown and already revoked tokens count as revoked.
	if err := c.Revoke(ctx, creds, tok.AccessToken); err != nil {
		t.Errorf("second revoke: %v", err)
	}
	if err := c.Revoke(ctx, creds, "unknown-token"); err != nil {
		t.Errorf("unknown token: %v", err)
	}
	// Only the minting application may revoke.
	fake.AddClient("other-client", "other-secret-value")
	tok2, err := c.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Revoke(ctx, connect.Credentials{ClientID: "other-client", ClientSecret: "other-secret-value"}, tok2.AccessToken)
	if ce, ok := connect.AsError(err); !ok || ce.Code != connect.ErrUnauthorizedClient || ce.Temporary() {
		t.Errorf("revoke by other client: %v", err)
	}
	if !fake.TokenLive(tok2.AccessToken) {
		t.Error("token revoked by another client")
	}
}

func TestConnectionRefusedIsRetriedThenReported(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens here now
	fake := newFake(t)
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.BaseURL = "http://" + addr; cfg.MaxRetries = 2 })
	start := time.Now()
	_, err = c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	ce, ok := connect.AsError(err)
	if !ok || !ce.Temporary() || ce.Attempts != 3 {
		t.Fatalf("err = %#v", err)
	}
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error does not say why: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("took %v", time.Since(start))
	}
	t.Logf("connection refused: %d attempts, then %v", ce.Attempts, err)
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	target := newFake(t)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()
	c := newClient(t, target, func(cfg *connect.Config) { cfg.BaseURL = redirector.URL })
	_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if ce, ok := connect.AsError(err); !ok || ce.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("err = %v", err)
	}
	if got := target.Requests(connect.PathToken); got != 0 {
		t.Errorf("redirect followed: target saw %d requests carrying the credentials", got)
	}
}
