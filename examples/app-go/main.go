// Command app-go calls Instacart Connect with a token from Vault, through
// tokensource: one Vault read per token life, re-read before the token
// expires. It prints counts, never a token.
//
//	VAULT_ADDR=... VAULT_TOKEN=... CONNECT_URL=https://connect.dev.instacart.tools \
//	    go run . instacart/creds/fulfillment 10000 30s   # 10,000 calls over 30 s
//
// The Vault token needs examples/policies/app.hcl (for the role it reads)
// and nothing more. Through Vault Proxy, set VAULT_AGENT_ADDR to its listener
// instead of VAULT_ADDR: the app then leaves the Proxy's shared lease alone
// on exit. A 401 from Connect makes it read a new token once and retry.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/tokensource"
)

func main() {
	if len(os.Args) != 4 {
		log.Fatal("usage: app-go <creds path> <calls> <spread over, e.g. 30s>")
	}
	calls, _ := strconv.Atoi(os.Args[2])
	over, err := time.ParseDuration(os.Args[3])
	if calls < 1 || over <= 0 || err != nil {
		log.Fatal("calls must be a positive number and the spread a duration such as 30s")
	}
	vault, err := api.NewClient(api.DefaultConfig()) // VAULT_ADDR, VAULT_TOKEN
	if err != nil {
		log.Fatal(err)
	}
	// The hook logs a failed re-read, which the Source otherwise rides out
	// on the current token, and why a token Connect refused was not replaced.
	opts := []tokensource.Option{tokensource.WithErrorHook(func(err error) { log.Print(err) })} // names no token
	// Revoke the leases on exit (examples/policies/app.hcl allows it), but
	// not through a Vault Agent or Proxy (VAULT_AGENT_ADDR): the Proxy's
	// cached lease is shared by every app reading through it, and revoking
	// it would hand the next one a revoked lease from the cache.
	if os.Getenv(api.EnvVaultAgentAddr) == "" {
		opts = append(opts, tokensource.WithRevokeOnClose())
	}
	src, err := tokensource.New(vault, os.Args[1], opts...)
	if err != nil {
		log.Fatal(err)
	}
	connect := tokensource.HTTPClient(context.Background(), src)

	statuses, tokens, last, lastExpiry, start := map[string]int{}, 0, "", time.Time{}, time.Now()
	for i := range calls {
		time.Sleep(time.Until(start.Add(over * time.Duration(i) / time.Duration(calls))))
		if tok, err := src.Token(); err == nil && tok.AccessToken != last { // compared, never printed
			if tokens++; last != "" {
				fmt.Printf("token %d: the previous one had %.1fs left\n", tokens, time.Until(lastExpiry).Seconds())
			}
			last, lastExpiry = tok.AccessToken, tok.Expiry
		}
		resp, err := connect.Post(os.Getenv("CONNECT_URL")+"/v2/fulfillment/users", "application/json",
			strings.NewReader(`{"user_id":"johnsmith6000","first_name":"john","last_name":"smith"}`))
		if err != nil {
			if statuses["error"]++; statuses["error"] == 1 {
				log.Print(err) // names the URL, never the token
			}
			continue
		}
		resp.Body.Close()
		statuses[resp.Status]++
	}
	fmt.Printf("calls: %d, tokens: %d, statuses: %v\n", calls, tokens, statuses)
	if err := src.Close(); err != nil { // revokes the leases it holds, unless behind a Proxy
		log.Fatal(err)
	}
	if statuses["200 OK"] != calls {
		os.Exit(1)
	}
}
