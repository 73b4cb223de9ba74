package tokensource_test

import (
	"context"
	"fmt"
	"log"
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
// ends (the Vault token needs update on sys/leases/revoke).
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
