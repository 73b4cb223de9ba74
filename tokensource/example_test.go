package tokensource_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"golang.org/x/oauth2"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/tokensource"
)

// An application calls Connect with a token from Vault. The Vault client reads
// VAULT_ADDR and VAULT_TOKEN from the environment; the token is re-read from
// Vault about once a day, shortly before it expires.
func Example() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	src, err := tokensource.New(vault, "instacart/creds/fulfillment")
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()

	connect := tokensource.HTTPClient(context.Background(), src)
	resp, err := connect.Post("https://connect.instacart.com/v2/fulfillment/users", "application/json",
		strings.NewReader(`{"user_id":"johnsmith6000","first_name":"john","last_name":"smith"}`))
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
}

// Roles of the fulfillment_user_assertion grant that let the caller choose
// the user take the user id, written to the creds path on each read.
func ExampleWithUserID() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	src, err := tokensource.New(vault, "instacart/creds/shoppers", tokensource.WithUserID("store-1234"))
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	tok, err := src.Token()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tok.Extra("user_id"), tok.Expiry.After(time.Now()))
}

// Re-read 30 minutes before expiry, and revoke the leases when the program
// ends (examples/policies/app.hcl lets the Vault token revoke its role's
// leases: sys/leases/revoke/instacart/creds/fulfillment/*).
func ExampleWithEarlyRefresh() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	src, err := tokensource.New(vault, "instacart/creds/fulfillment",
		tokensource.WithEarlyRefresh(30*time.Minute), tokensource.WithRevokeOnClose())
	if err != nil {
		log.Fatal(err)
	}
	defer func() {
		if err := src.Close(); err != nil {
			log.Print(err)
		}
	}()
	// ... use src ...
}

// Any code that takes an oauth2.TokenSource can use a Source; to send the
// token yourself, set the header with the token's own method.
func ExampleSource_Token() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	src, err := tokensource.New(vault, "instacart/creds/fulfillment")
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	tok, err := src.Token()
	if err != nil {
		log.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "https://connect.instacart.com/v2/fulfillment/users",
		strings.NewReader(`{"user_id":"johnsmith6000","first_name":"john","last_name":"smith"}`))
	req.Header.Set("Content-Type", "application/json")
	tok.SetAuthHeader(req) // Authorization: Bearer <token>; never log the token
	fmt.Println(tok.Type(), tok.Extra("scopes"))
}

// An app that sets the Authorization header itself (rather than through
// HTTPClient, which does this for it) tells the Source when Connect answers
// 401: the token is dead (revoked by an operator's flush, say). Invalidate
// reads a new one once, however many requests were refused with it; the
// request is sent once more, and a second 401 is the answer.
func ExampleSource_Invalidate() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	src, err := tokensource.New(vault, "instacart/creds/fulfillment")
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	ctx := context.Background()
	send := func(tok *oauth2.Token) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://connect.instacart.com/v2/fulfillment/users/johnsmith6000", nil)
		if err != nil {
			return nil, err
		}
		tok.SetAuthHeader(req)
		return http.DefaultClient.Do(req)
	}
	tok, err := src.TokenContext(ctx)
	if err != nil {
		log.Fatal(err)
	}
	resp, err := send(tok)
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		if src.Invalidate(ctx, tok) == nil { // else: keep the 401 (the error hook hears why)
			if tok, err = src.TokenContext(ctx); err == nil {
				resp.Body.Close()
				resp, err = send(tok) // once: a second 401 stands
			}
		}
	}
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
}

// HTTPClient uses the transport of an *http.Client put in the context under
// oauth2.HTTPClient, for example one with timeouts or a proxy.
func ExampleHTTPClient() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	src, err := tokensource.New(vault, "instacart/creds/fulfillment")
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	base := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 10 * time.Second}}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, base)
	connect := tokensource.HTTPClient(ctx, src)
	connect.Timeout = 30 * time.Second
	_ = connect
}

// A request's deadline bounds the wait for a token: a cold read that Vault is
// slow to answer does not hold the caller for the Vault client's full
// timeout and retries. HTTPClient passes each request's context the same way.
func ExampleSource_TokenContext() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	src, err := tokensource.New(vault, "instacart/creds/fulfillment")
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	tok, err := src.TokenContext(ctx)
	if err != nil {
		log.Print(err) // errors.Is(err, context.DeadlineExceeded) if Vault was too slow
		return
	}
	_ = tok
}

// A failed early re-read leaves the Source serving the current token, which
// is still valid; log the failure so it is seen before the token expires.
func ExampleWithErrorHook() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	src, err := tokensource.New(vault, "instacart/creds/fulfillment",
		tokensource.WithErrorHook(func(err error) { slog.Warn("instacart token from Vault", "error", err) }))
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
}

// An assertion role with allowed_user_ids: one Source per user, at most
// 10,000 of them; the least recently used user's leases are revoked when it
// is evicted, and everyone's on Close.
func ExamplePool() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	pool, err := tokensource.NewPool(vault, "instacart/creds/shoppers", 10000, tokensource.WithRevokeOnClose())
	if err != nil {
		log.Fatal(err)
	}
	defer func() {
		if err := pool.Close(); err != nil {
			log.Print(err)
		}
	}()
	tok, err := pool.Token(context.Background(), "store-1234")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tok.Extra("user_id"))
	// Or an *http.Client for one user:
	connect := tokensource.HTTPClient(context.Background(), pool.TokenSource("store-1234"))
	_ = connect
}

// An authorization_code role: each code from Instacart is exchanged once, in
// the handler of the redirect_uri, and the app keeps the user's token.
func ExampleExchanger() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	linking, err := tokensource.NewExchanger(vault, "instacart/creds/linking")
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/instacart/callback", func(w http.ResponseWriter, r *http.Request) {
		tok, err := linking.Exchange(r.Context(), r.URL.Query().Get("code"))
		if err != nil {
			http.Error(w, "linking failed", http.StatusBadGateway) // err names no code or token
			return
		}
		_ = tok // store it for the user; linking.Revoke(ctx, tok) when they unlink
	})
}

// Code that wraps a TokenSource in oauth2.ReuseTokenSource keeps each token
// until 10 seconds before its Expiry, skipping the Source's early re-read.
// Wrap it with ReuseTokenSourceWithExpiry and the same early-refresh window
// instead, so the wrapper asks the Source whenever the Source would re-read.
func Example_reuseTokenSource() {
	vault, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	src, err := tokensource.New(vault, "instacart/creds/fulfillment")
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	reuse := oauth2.ReuseTokenSourceWithExpiry(nil, src, tokensource.DefaultEarlyRefresh)
	_ = reuse
}

// Through Vault Proxy (examples/proxy/proxy.hcl, with use_auto_auth_token):
// set VAULT_AGENT_ADDR=http://127.0.0.1:8100, which api.DefaultConfig reads,
// and leave VAULT_TOKEN unset, so the Proxy adds its own token. Leave
// WithRevokeOnClose off there: the Proxy's cached lease is shared by every
// app that reads through it, and the Proxy renews it. A token Connect
// refuses is replaced past the Proxy's cache (see Source.Invalidate).
func Example_vaultProxy() {
	vault, err := api.NewClient(api.DefaultConfig()) // VAULT_AGENT_ADDR
	if err != nil {
		log.Fatal(err)
	}
	src, err := tokensource.New(vault, "instacart/creds/fulfillment")
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
}
