package connect_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// Connect's error_description can repeat what the request carried (here the
// user id of an assertion): the Error keeps it in Description, for a caller
// that knows where it is safe to show, but no formatting of the error says it.
func TestErrorTextLeavesOutConnectsDescription(t *testing.T) {
	const user = "store-qv9z-desc"
	fake := newFake(t)
	fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: http.StatusBadRequest,
		Body: `{"error":"invalid_grant","error_description":"assertion for ` + user + ` refused"}`})
	c := newClient(t, fake, nil)
	_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantFulfillmentUserAssertion, UserID: user, Scopes: []string{"connect:recommendations"}})
	ce, ok := connect.AsError(err)
	if !ok || ce.Code != connect.ErrInvalidGrant || !strings.Contains(ce.Description, user) {
		t.Fatalf("err = %v, want invalid_grant with Connect's description kept in Description", err)
	}
	for _, text := range []string{err.Error(), fmt.Sprint(err), fmt.Sprintf("%+v", err)} {
		if strings.Contains(text, user) || strings.Contains(text, "assertion for") {
			t.Errorf("the error's text quotes Connect's description: %q", strings.ReplaceAll(text, user, "<user>"))
		}
	}
	if !strings.Contains(err.Error(), "invalid_grant") {
		t.Errorf("the error's text does not name the code: %q", err.Error())
	}
}

// A redirect's explanation is the client's own words, so the error says it.
func TestRedirectErrorSaysItWasNotFollowed(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://example.invalid"+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	c := newClient(t, newFake(t), func(cfg *connect.Config) { cfg.BaseURL = srv.URL })
	_, err := c.Token(context.Background(), connect.TokenRequest{GrantType: connect.GrantClientCredentials})
	if ce, ok := connect.AsError(err); !ok || ce.StatusCode != http.StatusTemporaryRedirect || !strings.Contains(err.Error(), "unexpected redirect (not followed") {
		t.Fatalf("err = %v, want a 307 saying the redirect was not followed", err)
	}
}

// A 429's Retry-After reaches the caller, who may try again later.
func TestErrorCarriesRetryAfter(t *testing.T) {
	fake := newFake(t)
	fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: http.StatusTooManyRequests, RetryAfter: "7"})
	c := newClient(t, fake, func(cfg *connect.Config) { cfg.MaxRetries = 0 })
	err := c.Revoke(context.Background(), c.Credentials(), "no-such-token", nil)
	ce, ok := connect.AsError(err)
	if !ok || ce.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("err = %v, want a 429", err)
	}
	if ce.RetryAfter != 7*time.Second {
		t.Errorf("RetryAfter = %v, want the 7s Connect asked for", ce.RetryAfter)
	}
}
