package connect_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
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
	rec := fake.LastRequest(connectfake.PathToken)
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
			fake.InjectFaults(connectfake.PathToken, tc.faults...)
			tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
			if err != nil {
				t.Fatalf("Token after %d faults: %v", len(tc.faults), err)
			}
			if !fake.TokenLive(tok.AccessToken) {
				t.Error("token not live")
			}
			if got, want := fake.Requests(connectfake.PathToken), len(tc.faults)+1; got != want {
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
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	ce, ok := connect.AsError(err)
	if !ok || ce.StatusCode != 503 || !ce.Temporary() || ce.Attempts != 3 {
		t.Fatalf("err = %#v", err)
	}
	if got := fake.Requests(connectfake.PathToken); got != 3 {
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
			if got := fake.Requests(connectfake.PathToken); got != 1 {
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
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 403, Body: `{"error":"query_params_forbidden","error_description":"Providing OAuth credentials as query parameters may cause them to be compromised. Please ensure the credentials are rotated."}`})
	_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	ce, ok := connect.AsError(err)
	if !ok || ce.Code != connect.ErrQueryParamsForbidden || !ce.CredentialsRejected() {
		t.Fatalf("err = %v", err)
	}
	if got := fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("requests = %d, want 1", got)
	}
}

func TestHungUpstreamReturnsWithinDeadline(t *testing.T) {
	fake := newFake(t)
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.RequestTimeout = 10 * time.Second })
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true}, connectfake.Fault{Hang: true})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := c.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if err == nil {
		t.Fatal("expected an error")
	}
	// Ignoring the deadline would wait out the 10 s attempt and retry.
	if got := fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("%d attempts, want 1: the deadline ends the call", got)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want deadline exceeded", err)
	}
}

func TestRequestTimeoutBoundsEachAttempt(t *testing.T) {
	fake := newFake(t)
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.RequestTimeout = 200 * time.Millisecond; cfg.MaxRetries = 1 })
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true})
	tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if err != nil {
		t.Fatalf("second attempt should succeed: %v", err)
	}
	if got := fake.Requests(connectfake.PathToken); got != 2 {
		t.Errorf("%d attempts, want 2: the hung one timed out, the next succeeded", got)
	}
	if !fake.TokenLive(tok.AccessToken) {
		t.Error("token not live")
	}
}

func TestMalformedSuccessResponses(t *testing.T) {
	bodies := map[string]string{
		"malformed JSON":    `{"access_token":`,
		"truncated JSON":    `{"access_token":"abc","token_type":"Bearer","expires_in":864`,
		"HTML error page":   `<html><body>Bad Gateway</body></html>`,
		"JSON array":        `[]`,
		"no token":          `{"token_type":"Bearer","expires_in":86400,"created_at":1}`,
		"expires_in zero":   `{"access_token":"abc","token_type":"Bearer","expires_in":0}`,
		"expires_in < 0":    `{"access_token":"abc","token_type":"Bearer","expires_in":-5}`,
		"expires_in absurd": `{"access_token":"abc","token_type":"Bearer","expires_in":1e12}`,
		"not bearer":        `{"access_token":"abc","token_type":"mac","expires_in":86400}`,
		"created_at string": `{"access_token":"abc","token_type":"Bearer","expires_in":86400,"created_at":"yesterday"}`,
		"created_at < 0":    `{"access_token":"abc","token_type":"Bearer","expires_in":86400,"created_at":-5}`,
		"created_at absurd": `{"access_token":"abc","token_type":"Bearer","expires_in":86400,"created_at":1e300}`,
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			fake := newFake(t)
			c := newClient(t, fake, func(cfg *connect.Config) { cfg.MaxRetries = 0 })
			fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 200, Body: body})
			tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
			ce, ok := connect.AsError(err)
			if tok != nil || !ok || ce.Code != connect.ErrInvalidResponse || !ce.Sent {
				t.Fatalf("tok=%v err=%#v", tok, err)
			}
		})
	}
}

func TestClockSkewNeverMovesExpiry(t *testing.T) {
	for _, skew := range []time.Duration{time.Hour, -time.Hour} {
		fake := newFake(t)
		fake.SetClockSkew(skew)
		c := newClient(t, fake, nil)
		before := time.Now()
		tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
		if err != nil {
			t.Fatal(err)
		}
		after := time.Now()
		if tok.RequestedAt.Before(before) || tok.RequestedAt.After(after) {
			t.Errorf("skew %v: requested_at %v outside the call", skew, tok.RequestedAt)
		}
		if !tok.ExpiresAt.Equal(tok.RequestedAt.Add(24 * time.Hour)) {
			t.Errorf("skew %v: expiry %v is not receive time %v + expires_in", skew, tok.ExpiresAt, tok.RequestedAt)
		}
		if tok.CreatedAt.After(tok.RequestedAt) {
			t.Errorf("skew %v: created_at %v after receipt %v", skew, tok.CreatedAt, tok.RequestedAt)
		}
		if skew < 0 && tok.CreatedAt.After(before.Add(skew+time.Second)) {
			t.Errorf("skew %v: created_at %v is not Connect's", skew, tok.CreatedAt)
		}
	}
}

// A Doorkeeper server that reuses a token answers with its original
// created_at and the remaining expires_in.
func TestExpiresInCountsFromReceipt(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"reused-token","token_type":"Bearer","expires_in":36400,"created_at":%d,"scope":"connect:fulfillment"}`, now.Unix()-50_000)
	}))
	defer srv.Close()
	c := newClient(t, newFake(t), func(cfg *connect.Config) {
		cfg.BaseURL = srv.URL
		cfg.Now = func() time.Time { return now }
	})
	tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if !tok.ExpiresAt.Equal(now.Add(36_400 * time.Second)) {
		t.Errorf("expires_at = %v, want received + 36400s = %v", tok.ExpiresAt, now.Add(36_400*time.Second))
	}
	if !tok.CreatedAt.Equal(now.Add(-50_000 * time.Second)) {
		t.Errorf("created_at = %v, want %v", tok.CreatedAt, now.Add(-50_000*time.Second))
	}
	if !tok.RequestedAt.Equal(now) || tok.ExpiresIn != 36_400*time.Second {
		t.Errorf("requested_at %v, expires_in %v", tok.RequestedAt, tok.ExpiresIn)
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
	if err := c.Revoke(ctx, creds, tok.AccessToken, nil); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if fake.TokenLive(tok.AccessToken) {
		t.Error("token still live after revoke")
	}
	// Unknown and already revoked tokens count as revoked.
	if err := c.Revoke(ctx, creds, tok.AccessToken, nil); err != nil {
		t.Errorf("second revoke: %v", err)
	}
	if err := c.Revoke(ctx, creds, "unknown-token", nil); err != nil {
		t.Errorf("unknown token: %v", err)
	}
	// Only the minting application may revoke.
	fake.AddClient("other-client", "other-secret-value")
	tok2, err := c.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Revoke(ctx, connect.Credentials{ClientID: "other-client", ClientSecret: "other-secret-value"}, tok2.AccessToken, nil)
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
	_, err = c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	ce, ok := connect.AsError(err)
	if !ok || !ce.Temporary() || ce.Attempts != 3 {
		t.Fatalf("err = %#v", err)
	}
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error does not say why: %v", err)
	}
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
	if got := target.Requests(connectfake.PathToken); got != 0 {
		t.Errorf("redirect followed: target saw %d requests carrying the credentials", got)
	}
}

const testRedirect = "https://example.com/cb"

func codeRequest(fake *connectfake.Server) connect.TokenRequest {
	return connect.TokenRequest{GrantType: connect.GrantAuthorizationCode, Scopes: []string{"account_linking"},
		Code: fake.IssueAuthorizationCode(testClientID, testRedirect, "linked-user"), RedirectURI: testRedirect}
}

// Connect may have processed (and consumed the code of) any request it read,
// whatever it answered: an authorization code is sent once, while the other
// grants retry the same failure.
func TestAuthorizationCodeIsNeverResent(t *testing.T) {
	tests := []struct {
		name  string
		fault connectfake.Fault
	}{
		{"connection reset after the body was read", connectfake.Fault{Reset: true}},
		{"connection reset after Connect consumed the code", connectfake.Fault{Reset: true, AfterHandling: true}},
		{"hang past the per-attempt timeout", connectfake.Fault{Hang: true}},
		{"late answer after the per-attempt timeout", connectfake.Fault{Hang: true, AfterHandling: true}},
		{"500", connectfake.Fault{Status: 500}},
		{"502", connectfake.Fault{Status: 502}},
		{"408", connectfake.Fault{Status: 408}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mod := func(cfg *connect.Config) { cfg.RequestTimeout = 300 * time.Millisecond }

			fake := newFake(t)
			c := newClient(t, fake, mod)
			fake.InjectFaults(connectfake.PathToken, tc.fault)
			_, err := c.Token(context.Background(), codeRequest(fake))
			ce, ok := connect.AsError(err)
			if !ok || !ce.Sent || ce.Attempts != 1 || ce.Unprocessed() {
				t.Fatalf("err = %#v", err)
			}
			if got := fake.Requests(connectfake.PathToken); got != 1 {
				t.Errorf("authorization_code: Connect saw %d requests, want exactly 1", got)
			}

			// The same failure is retried for a grant that may be repeated.
			fake = newFake(t)
			c = newClient(t, fake, mod)
			fake.InjectFaults(connectfake.PathToken, tc.fault)
			if _, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials}); err != nil {
				t.Fatalf("client_credentials after one fault: %v", err)
			}
			if got := fake.Requests(connectfake.PathToken); got != 2 {
				t.Errorf("client_credentials: Connect saw %d requests, want 2", got)
			}
		})
	}
}

// 429 and 503 say Connect did not process the request, so the code is intact.
func TestAuthorizationCodeRetriedWhenConnectTurnedItAway(t *testing.T) {
	for _, status := range []int{429, 503} {
		fake := newFake(t)
		c := newClient(t, fake, nil)
		fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: status})
		tok, err := c.Token(context.Background(), codeRequest(fake))
		if err != nil {
			t.Fatalf("%d then 200: %v", status, err)
		}
		if got := fake.Requests(connectfake.PathToken); got != 2 {
			t.Errorf("%d then 200: %d requests, want 2", status, got)
		}
		if info, _ := fake.Token(tok.AccessToken); info.UserID != "linked-user" {
			t.Errorf("%d then 200: token for %q", status, info.UserID)
		}
	}
}

func TestAuthorizationCodeRetriedWhenNeverSent(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		fake := newFake(t)
		c := newClient(t, fake, func(cfg *connect.Config) { cfg.BaseURL = "http://" + addr; cfg.MaxRetries = 2 })
		_, err = c.Token(context.Background(), codeRequest(fake))
		ce, ok := connect.AsError(err)
		if !ok || ce.Attempts != 3 || ce.Sent || ce.Timeout() || !ce.Unprocessed() {
			t.Fatalf("err = %#v", err)
		}
	})

	t.Run("TLS handshake failure", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan struct{}, 10)
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- struct{}{}
				conn.Close() // before any handshake byte comes back
			}
		}()
		fake := newFake(t)
		c := newClient(t, fake, func(cfg *connect.Config) { cfg.BaseURL = "https://" + ln.Addr().String(); cfg.MaxRetries = 2 })
		_, err = c.Token(context.Background(), codeRequest(fake))
		ce, ok := connect.AsError(err)
		if !ok || ce.Attempts != 3 || ce.Sent || !ce.Unprocessed() {
			t.Fatalf("err = %#v", err)
		}
		if len(accepted) != 3 {
			t.Errorf("%d connections, want 3", len(accepted))
		}
	})

	t.Run("per-attempt timeout while connecting", func(t *testing.T) {
		fake := newFake(t)
		var dials atomic.Int32
		var d net.Dialer
		tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if dials.Add(1) == 1 {
				<-ctx.Done() // cancelled when the attempt times out
				return nil, ctx.Err()
			}
			return d.DialContext(ctx, network, addr)
		}}
		defer tr.CloseIdleConnections()
		c := newClient(t, fake, func(cfg *connect.Config) { cfg.Transport = tr; cfg.RequestTimeout = 200 * time.Millisecond })
		tok, err := c.Token(context.Background(), codeRequest(fake))
		if err != nil {
			t.Fatalf("second attempt should succeed: %v", err)
		}
		if !fake.TokenLive(tok.AccessToken) || fake.Requests(connectfake.PathToken) != 1 {
			t.Errorf("live %v, requests %d", fake.TokenLive(tok.AccessToken), fake.Requests(connectfake.PathToken))
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// failingTransport fails without tracing, so nothing proves the request unsent.
type failingTransport struct{ calls int }

func (f *failingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	f.calls++
	return nil, errors.New("opaque transport failure")
}

func TestAuthorizationCodeNotRetriedWhenUnsentCannotBeProven(t *testing.T) {
	fake := newFake(t)
	tr := &failingTransport{}
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.Transport = tr })
	_, err := c.Token(context.Background(), codeRequest(fake))
	if ce, ok := connect.AsError(err); !ok || !ce.Sent || ce.Unprocessed() || tr.calls != 1 {
		t.Fatalf("calls %d, err = %#v", tr.calls, err)
	}
	_, _ = c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if tr.calls != 1+4 {
		t.Errorf("client_credentials: %d calls, want 4", tr.calls-1)
	}
}

// A 200 that names a token we cannot use is not revoked inside connect (one
// best-effort try would lose it whenever Connect is briefly down): the token
// is handed to the caller, for its revocation queue, with how long it lives.
func TestUnusableTokenIsHandedToTheCallerNotRevoked(t *testing.T) {
	const day = 24 * time.Hour
	cases := map[string]struct {
		body string
		life time.Duration // ExpiresAt - RequestedAt
	}{
		"not bearer":                    {`{"access_token":"{access_token}","token_type":"mac","expires_in":86400}`, day},
		"not bearer, 1h":                {`{"access_token":"{access_token}","token_type":"mac","expires_in":3600}`, time.Hour},
		"expires_in zero":               {`{"access_token":"{access_token}","token_type":"Bearer","expires_in":0}`, day},
		"expires_in < 0":                {`{"access_token":"{access_token}","token_type":"Bearer","expires_in":-5}`, day},
		"expires_in absurd":             {`{"access_token":"{access_token}","token_type":"Bearer","expires_in":1e12}`, day},
		"expires_in string":             {`{"access_token":"{access_token}","token_type":"Bearer","expires_in":"3600"}`, day},
		"created_at string, expires 2h": {`{"access_token":"{access_token}","token_type":"Bearer","expires_in":7200,"created_at":"yesterday"}`, 2 * time.Hour},
		"created_at absurd":             {`{"access_token":"{access_token}","token_type":"Bearer","expires_in":86400,"created_at":1e300}`, day},
		"no token_type, no expires_in":  {`{"access_token":"{access_token}"}`, day},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			fake := newFake(t)
			clock := newFakeClock()
			c := newClient(t, fake, clock.install)
			fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 200, Body: tc.body, AfterHandling: true})
			tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
			ce, ok := connect.AsError(err)
			if tok != nil || !ok || ce.Code != connect.ErrInvalidResponse || ce.StatusCode != 200 || !ce.Sent || ce.Unprocessed() {
				t.Fatalf("tok=%v err=%v", tok != nil, err)
			}
			named, ok := ce.UnusableToken()
			if !ok {
				t.Fatal("UnusableToken reports no token")
			}
			if _, known := fake.Token(named.AccessToken); !known || !fake.TokenLive(named.AccessToken) {
				t.Error("UnusableToken is not the token Connect minted, live")
			}
			if fake.Revocations() != 0 || fake.Requests(connectfake.PathRevoke) != 0 {
				t.Errorf("connect revoked it itself: %d revoke requests", fake.Requests(connectfake.PathRevoke))
			}
			if !named.RequestedAt.Equal(clock.start) || !named.ExpiresAt.Equal(clock.start.Add(tc.life)) {
				t.Errorf("requested %v, expires %v; want %v and +%v", named.RequestedAt, named.ExpiresAt, clock.start, tc.life)
			}
			assertNotInError(t, err, named.AccessToken)
		})
	}
}

// assertNotInError fails if any formatting of err (or of the Error value
// itself) carries 8 consecutive bytes of secret. It never prints secret.
func assertNotInError(t *testing.T, err error, secret string) {
	t.Helper()
	texts := []string{err.Error(), fmt.Sprint(err), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err), fmt.Sprintf("%q", err)}
	if ce, ok := connect.AsError(err); ok {
		texts = append(texts, fmt.Sprintf("%v", *ce), fmt.Sprintf("%+v", *ce), fmt.Sprintf("%#v", *ce))
		if b, jerr := json.Marshal(ce); jerr == nil {
			texts = append(texts, string(b))
		}
	}
	for _, text := range texts {
		for i := 0; i+8 <= len(secret); i++ {
			if strings.Contains(text, secret[i:i+8]) {
				t.Fatalf("a formatting of the error carries part of the token (%d bytes of it at offset %d)", 8, i)
			}
		}
	}
}

// Even when Connect's words echo the token, neither the error nor any
// formatting of it carries the token, which UnusableToken alone hands out.
func TestUnusableTokenErrorNeverNamesIt(t *testing.T) {
	const tok = "Zm9yLXRlc3RzLW9ubHktbm90LWEtcmVhbC10b2tlbg"
	var revokes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == connectfake.PathRevoke {
			revokes.Add(1)
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":%q,"error_description":"cannot revoke %s"}`, tok, tok)
			return
		}
		fmt.Fprintf(w, `{"access_token":%q,"token_type":%q,"expires_in":86400}`, tok, tok[:12])
	}))
	defer srv.Close()
	c := newClient(t, newFake(t), func(cfg *connect.Config) { cfg.BaseURL = srv.URL; cfg.MaxRetries = 0 })
	_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	ce, ok := connect.AsError(err)
	if !ok || ce.Code != connect.ErrInvalidResponse {
		t.Fatalf("err = %v", err)
	}
	if named, ok := ce.UnusableToken(); !ok || named.AccessToken != tok {
		t.Fatal("UnusableToken does not hand out the token the answer named")
	}
	if revokes.Load() != 0 {
		t.Errorf("%d revocations inside connect, want none", revokes.Load())
	}
	assertNotInError(t, err, tok)
	t.Logf("error: %v", err)
}

func TestNothingToRevokeWithoutAnAccessToken(t *testing.T) {
	for _, body := range []string{`{"token_type":"Bearer","expires_in":86400}`, `{"access_token":42,"token_type":"mac"}`, `{"access_token":"x"`, `{"access_token":"","expires_in":60}`} {
		fake := newFake(t)
		c := newClient(t, fake, nil)
		fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 200, Body: body})
		_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
		ce, ok := connect.AsError(err)
		if !ok || ce.Code != connect.ErrInvalidResponse {
			t.Fatalf("%s: err = %v", body, err)
		}
		if _, named := ce.UnusableToken(); named {
			t.Errorf("%s: UnusableToken reports a token", body)
		}
		if got := fake.Requests(connectfake.PathRevoke); got != 0 {
			t.Errorf("%s: %d revoke requests", body, got)
		}
	}
}

func TestErrorTimeout(t *testing.T) {
	t.Run("caller's deadline", func(t *testing.T) {
		fake := newFake(t)
		c := newClient(t, fake, func(cfg *connect.Config) { cfg.RequestTimeout = 10 * time.Second })
		fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := c.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials})
		if ce, ok := connect.AsError(err); !ok || !ce.Timeout() {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("per-attempt timeout", func(t *testing.T) {
		fake := newFake(t)
		c := newClient(t, fake, func(cfg *connect.Config) { cfg.RequestTimeout = 200 * time.Millisecond; cfg.MaxRetries = 0 })
		fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true})
		_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
		if ce, ok := connect.AsError(err); !ok || !ce.Timeout() {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("network timeout", func(t *testing.T) {
		tr := roundTripFunc(func(*http.Request) (*http.Response, error) {
			return nil, &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
		})
		c := newClient(t, newFake(t), func(cfg *connect.Config) { cfg.Transport = tr; cfg.MaxRetries = 0 })
		_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
		if ce, ok := connect.AsError(err); !ok || !ce.Timeout() || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("not timeouts", func(t *testing.T) {
		fake := newFake(t)
		c := newClient(t, fake, func(cfg *connect.Config) { cfg.MaxRetries = 0 })
		fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Reset: true})
		for range 2 {
			_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
			if ce, ok := connect.AsError(err); !ok || ce.Timeout() {
				t.Errorf("err = %v reads as a timeout", err)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := c.Token(ctx, connect.TokenRequest{GrantType: connect.GrantClientCredentials})
		if ce, ok := connect.AsError(err); !ok || ce.Timeout() {
			t.Errorf("cancellation: err = %v reads as a timeout", err)
		}
	})
}

// A 200 whose body broke off is a network failure, worth trying later.
func TestBrokenSuccessIsTemporary(t *testing.T) {
	fake := newFake(t)
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.MaxRetries = 0 })
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Reset: true})
	_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	ce, ok := connect.AsError(err)
	if !ok || ce.StatusCode != 200 || !ce.Temporary() || !ce.Sent || !connect.IsTemporary(err) {
		t.Fatalf("err = %#v", err)
	}
}

// A token that arrives as the caller's deadline passes is returned, not
// dropped: dropping it would leave it live with nobody holding it, and for
// an authorization code would spend the code for nothing.
func TestAnswerArrivingAtTheDeadlineIsKept(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := roundTripFunc(func(*http.Request) (*http.Response, error) {
		cancel() // the caller gives up just as Connect's answer arrives
		body := `{"access_token":"placeholder-token","token_type":"Bearer","expires_in":86400,"created_at":1603897760}`
		return &http.Response{
			StatusCode: http.StatusOK,
			Header:     http.Header{"Content-Type": {"application/json"}},
			Body:       io.NopCloser(strings.NewReader(body)),
		}, nil
	})
	c := newClient(t, newFake(t), func(cfg *connect.Config) { cfg.Transport = tr })
	tok, err := c.Token(ctx, codeRequest(newFake(t)))
	if err != nil {
		t.Fatalf("the answer was dropped: %v", err)
	}
	if tok.AccessToken != "placeholder-token" {
		t.Errorf("got %q", tok.AccessToken)
	}
}

// A slow answer does not stretch the token's life past what Connect meant:
// expires_in counts from when the successful request was sent.
func TestSlowAnswerDoesNotStretchExpiry(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	now := t0
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	tr := roundTripFunc(func(*http.Request) (*http.Response, error) {
		mu.Lock()
		now = now.Add(30 * time.Second) // the answer takes 30 s to arrive
		mu.Unlock()
		body := `{"access_token":"placeholder-token","token_type":"Bearer","expires_in":100}`
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(body))}, nil
	})
	c := newClient(t, newFake(t), func(cfg *connect.Config) { cfg.Transport = tr; cfg.Now = clock })
	tok, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if err != nil {
		t.Fatal(err)
	}
	if want := t0.Add(100 * time.Second); !tok.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt = %v, want %v (counted from the send)", tok.ExpiresAt, want)
	}
}

// A 429 slows every request of the client, not only the one that got it: a
// request started once the 429 has been read reaches Connect only after
// Retry-After.
func TestTooManyRequestsPausesTheWholeClient(t *testing.T) {
	fake := newFake(t)
	var mu sync.Mutex
	var arrivals []time.Time
	read429 := make(chan struct{})
	tr := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		n := len(arrivals)
		mu.Unlock()
		if n == 1 {
			return &http.Response{
				StatusCode: http.StatusTooManyRequests,
				Header:     http.Header{"Retry-After": {"1"}},
				Body:       &closeSignal{Reader: strings.NewReader(""), closed: read429},
			}, nil
		}
		return http.DefaultTransport.RoundTrip(r)
	})
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.Transport = tr })

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials}); err != nil {
			t.Errorf("first: %v", err)
		}
	}()
	<-read429 // the client has read the 429 and closed its body
	answered := time.Now()
	if _, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials}); err != nil {
		t.Fatalf("second: %v", err)
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(arrivals) != 3 {
		t.Fatalf("%d requests reached Connect, want 3", len(arrivals))
	}
	for _, at := range arrivals[1:] {
		if at.Sub(answered) < 900*time.Millisecond {
			t.Errorf("a request reached Connect %v after the 429 asked for a 1 s pause", at.Sub(answered))
		}
	}
}

// closeSignal is a response body that says when the client closed it.
type closeSignal struct {
	io.Reader
	closed chan struct{}
	once   sync.Once
}

func (c *closeSignal) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}
