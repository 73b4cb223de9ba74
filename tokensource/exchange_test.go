package tokensource

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

func newExchanger(t *testing.T, fv *fakeVault) *Exchanger {
	t.Helper()
	e, err := NewExchanger(vaultClient(t, fv.srv.URL), credsPath)
	if err != nil {
		t.Fatal(err)
	}
	e.now = fv.clock.Now
	return e
}

// TestExchange: a code is written once; the token carries its lease, and
// Revoke ends that lease with the lease id in the URL.
func TestExchange(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	e := newExchanger(t, fv)
	const code = "code-for-store-1234"
	tok, err := e.Exchange(context.Background(), code)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "tok-1" || !tok.Expiry.Equal(c.Now().Add(time.Hour)) || tok.Extra("lease_id") != credsPath+"/lease-1" {
		t.Errorf("token %s, expiry %v, lease %v", tok.AccessToken, tok.Expiry, tok.Extra("lease_id"))
	}
	if fv.methods[0] != http.MethodPut || len(fv.bodies[0]) != 1 || fv.bodies[0]["code"] != code {
		t.Errorf("creds call %s %v, want PUT with the code only", fv.methods[0], fv.bodies[0])
	}

	// The same code again: the engine refuses it; the error names neither
	// the code nor a token.
	_, err = e.Exchange(context.Background(), code)
	if err == nil || !strings.Contains(err.Error(), "single-use") || strings.Contains(err.Error(), code) || strings.Contains(err.Error(), "tok-") {
		t.Errorf("second exchange: %v", err)
	}

	if err := e.Revoke(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if got := fv.Revoked(); len(got) != 1 || got[0] != credsPath+"/lease-1" {
		t.Errorf("revoked %v", got)
	}
	if _, err := e.Exchange(context.Background(), ""); err == nil {
		t.Error("empty code accepted")
	}
}

// TestExchangeHonoursTheContext: ctx bounds the request.
func TestExchangeHonoursTheContext(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	gate, arrived := gated(t, fv)
	defer open(fv, gate)
	e := newExchanger(t, fv)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := e.Exchange(ctx, "a-code"); errc <- err }()
	<-arrived
	cancel()
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("Exchange after cancel: %v", err)
	}
}
