// Command tsclient drives tokensource through a real Vault for the
// end-to-end suite (e2e/clients_test.go), with the Vault token and policy an
// app would have (examples/policies/app.hcl). It prints counts and outcomes,
// one "key: value" per line, never a token.
//
//	VAULT_ADDR=... VAULT_TOKEN=... CONNECT_URL=... tsclient <scenario> <creds path> [arg]
//
// Scenarios:
//
//	renew <run>      one Source with WithRevokeOnClose, a call to Connect every
//	                 100 ms for run (a duration), then Close
//	pool             a Pool of 2 with WithRevokeOnClose: users store-1, store-2,
//	                 store-3 (evicting store-1), store-1 again, then Close
//	deadline <wait>  TokenContext with a deadline of wait on a cold Source,
//	                 then Token without one
//	heal             a Source (no WithRevokeOnClose) calls Connect, prints
//	                 "ready" and waits for a line on stdin (the test flushes
//	                 the role meanwhile), then calls again; then a second,
//	                 new Source calls once, as another app would
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"
	"golang.org/x/oauth2"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/tokensource"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tsclient:", err) // names no token
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: tsclient renew|pool|deadline|heal <creds path> [arg]")
	}
	vault, err := api.NewClient(api.DefaultConfig()) // VAULT_ADDR, VAULT_TOKEN
	if err != nil {
		return err
	}
	switch path := args[1]; args[0] {
	case "renew":
		d, err := duration(args)
		if err != nil {
			return err
		}
		return renew(vault, path, d)
	case "pool":
		return pool(vault, path)
	case "deadline":
		d, err := duration(args)
		if err != nil {
			return err
		}
		return deadline(vault, path, d)
	case "heal":
		return heal(vault, path)
	}
	return fmt.Errorf("unknown scenario %q", args[0])
}

func duration(args []string) (time.Duration, error) {
	if len(args) != 3 {
		return 0, errors.New("this scenario takes a duration")
	}
	return time.ParseDuration(args[2])
}

// call sends one request to Connect's users endpoint with src's token and
// returns the status, or "error".
func call(client *http.Client) string {
	resp, err := client.Post(os.Getenv("CONNECT_URL")+"/v2/fulfillment/users", "application/json",
		strings.NewReader(`{"user_id":"johnsmith6000","first_name":"john","last_name":"smith"}`))
	if err != nil {
		return "error"
	}
	resp.Body.Close()
	return resp.Status
}

// renew: a capped lease is renewed, so the token stays the same for the run.
func renew(vault *api.Client, path string, run time.Duration) error {
	var errs atomic.Int32
	src, err := tokensource.New(vault, path, tokensource.WithRevokeOnClose(),
		tokensource.WithErrorHook(func(err error) { errs.Add(1); fmt.Fprintln(os.Stderr, "hook:", err) }))
	if err != nil {
		return err
	}
	client := tokensource.HTTPClient(context.Background(), src)
	statuses, tokens, expiries := map[string]int{}, map[string]bool{}, map[time.Time]bool{}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(run); time.Now().Before(end); <-tick.C {
		tok, err := src.Token()
		if err != nil {
			return err
		}
		tokens[tok.AccessToken] = true // counted, never printed
		expiries[tok.Expiry] = true
		statuses[call(client)]++
	}
	if err := src.Close(); err != nil {
		return err
	}
	fmt.Printf("tokens: %d\nexpiries: %d\nhook errors: %d\nstatuses: %v\n", len(tokens), len(expiries), errs.Load(), statuses)
	return nil
}

// pool: per-user Sources, the least recently used evicted and its lease
// revoked, everyone's revoked on Close.
func pool(vault *api.Client, path string) error {
	hookErrs := make(chan error, 16)
	p, err := tokensource.NewPool(vault, path, 2, tokensource.WithRevokeOnClose(),
		tokensource.WithErrorHook(func(err error) { hookErrs <- err }))
	if err != nil {
		return err
	}
	ctx := context.Background()
	tokens := map[string]bool{}
	statuses := map[string]int{}
	leases := map[string]string{}
	for _, user := range []string{"store-1", "store-2", "store-3", "store-1"} {
		tok, err := p.Token(ctx, user)
		if err != nil {
			return err
		}
		if tok.Extra("user_id") != user {
			return fmt.Errorf("asked for %s's token, got %v's", user, tok.Extra("user_id"))
		}
		tokens[tok.AccessToken] = true
		if _, seen := leases[user]; !seen {
			leases[user], _ = tok.Extra("lease_id").(string)
		}
		statuses[call(tokensource.HTTPClient(ctx, p.TokenSource(user)))]++
	}
	// store-1 was evicted by store-3, and store-2 by store-1's return: their
	// first leases are revoked in the background. Lease lookups are in
	// Vault's default policy.
	for _, user := range []string{"store-1", "store-2"} {
		if err := waitRevoked(vault, leases[user]); err != nil {
			return fmt.Errorf("%s's lease after eviction: %w", user, err)
		}
	}
	fmt.Println("evicted leases revoked: 2")
	if err := p.Close(); err != nil {
		return err
	}
	if len(hookErrs) > 0 {
		return <-hookErrs
	}
	fmt.Printf("users: 3\ntokens: %d\nstatuses: %v\n", len(tokens), statuses)
	return nil
}

// waitRevoked waits until Vault no longer knows lease id.
func waitRevoked(vault *api.Client, id string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := vault.Sys().Lookup(id); err != nil {
			if strings.Contains(err.Error(), "invalid lease") {
				return nil
			}
			return err
		}
		if time.Now().After(deadline) {
			return errors.New("still live 30s after its Source was evicted")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// deadline: a caller's deadline bounds a cold read; the read goes on and
// serves the next caller.
func deadline(vault *api.Client, path string, wait time.Duration) error {
	src, err := tokensource.New(vault, path, tokensource.WithRevokeOnClose())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	start := time.Now()
	_, err = src.TokenContext(ctx)
	fmt.Printf("first: %s after %.1fs\n", outcome(err), time.Since(start).Seconds())
	start = time.Now()
	_, err = src.Token()
	fmt.Printf("second: %s after %.1fs\n", outcome(err), time.Since(start).Seconds())
	if err != nil {
		return err
	}
	fmt.Printf("status: %s\n", call(tokensource.HTTPClient(context.Background(), src)))
	return src.Close()
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "token"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	}
	return "error: " + err.Error()
}

// heal: a token Connect refuses after the operator's flush is replaced on
// the next call, with no restart: one 401, one fresh read, one retry. Run
// behind Vault Proxy, the second Source's plain read gets the refused token
// from the Proxy's cache and heals the same way. Attempts are printed as
// status and token number (1 for the first token seen), never a token.
func heal(vault *api.Client, path string) error {
	var hookErrs atomic.Int32
	hook := tokensource.WithErrorHook(func(err error) { hookErrs.Add(1); fmt.Fprintln(os.Stderr, "hook:", err) })
	rec := &recorder{base: http.DefaultTransport, seen: map[string]int{}}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: rec})

	app, err := tokensource.New(vault, path, hook)
	if err != nil {
		return err
	}
	defer app.Close()
	client := tokensource.HTTPClient(ctx, app)
	fmt.Printf("first: %s\n", call(client))
	fmt.Printf("first attempts: %s\n", rec.take())
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the flush: %w", err)
	}
	fmt.Printf("second: %s\n", call(client))
	fmt.Printf("second attempts: %s\n", rec.take())

	other, err := tokensource.New(vault, path, hook)
	if err != nil {
		return err
	}
	defer other.Close()
	fmt.Printf("newcomer: %s\n", call(tokensource.HTTPClient(ctx, other)))
	fmt.Printf("newcomer attempts: %s\n", rec.take())
	fmt.Printf("hook errors: %d\n", hookErrs.Load())
	return nil
}

// recorder is a RoundTripper that notes each attempt's status and token,
// numbering the tokens in the order it first sees them.
type recorder struct {
	base     http.RoundTripper
	mu       sync.Mutex
	seen     map[string]int // token -> its number; never printed
	attempts []string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	tok := strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")
	resp, err := r.base.RoundTrip(req)
	status := "error"
	if err == nil {
		status = resp.Status
	}
	r.mu.Lock()
	n, ok := r.seen[tok]
	if !ok {
		n = len(r.seen) + 1
		r.seen[tok] = n
	}
	r.attempts = append(r.attempts, fmt.Sprintf("%s with token %d", status, n))
	r.mu.Unlock()
	return resp, err
}

// take returns the attempts since the last take, comma-separated.
func (r *recorder) take() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := strings.Join(r.attempts, ", ")
	r.attempts = nil
	return out
}
