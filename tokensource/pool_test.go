package tokensource

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

func newPool(t *testing.T, fv *fakeVault, size int, opts ...Option) *Pool {
	t.Helper()
	p, err := NewPool(vaultClient(t, fv.srv.URL), credsPath, size, append(opts, onFakeClock(fv.clock))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func poolToken(t *testing.T, p *Pool, user, want string) *oauth2.Token {
	t.Helper()
	tok, err := p.Token(context.Background(), user)
	if err != nil {
		t.Fatalf("Token(%s): %v", user, err)
	}
	if tok.AccessToken != want {
		t.Fatalf("Token(%s) = %s, want %s", user, tok.AccessToken, want)
	}
	return tok
}

// TestPoolOneSourcePerUser: each user's token is written for once per token
// life, with that user's id, however often it is asked for.
func TestPoolOneSourcePerUser(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	p := newPool(t, fv, 10)
	for range 100 {
		poolToken(t, p, "store-1", "tok-1")
	}
	tok := poolToken(t, p, "store-2", "tok-2")
	if tok.Extra("user_id") != "store-2" {
		t.Errorf("user_id %v", tok.Extra("user_id"))
	}
	poolToken(t, p, "store-1", "tok-1")
	wantCalls(t, fv, 2)
	for i, b := range fv.bodies {
		if want := fmt.Sprintf("store-%d", i+1); fv.methods[i] != http.MethodPut || len(b) != 1 || b["user_id"] != want {
			t.Errorf("call %d: %s %v, want PUT user_id=%s", i, fv.methods[i], b, want)
		}
	}
	c.Advance(56 * time.Minute)
	poolToken(t, p, "store-1", "tok-3")
	if p.Len() != 2 {
		t.Errorf("Len = %d", p.Len())
	}
	if _, err := p.Token(context.Background(), ""); err == nil {
		t.Error("empty user id accepted")
	}
}

// TestPoolEvictsTheLeastRecentlyUsed: a full pool closes its least recently
// used user's Source to make room, revoking that user's lease as configured
// (under the app policy: lease id in the URL); Close revokes the rest.
func TestPoolEvictsTheLeastRecentlyUsed(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	revoked := make(chan string, 16)
	fv.revokedCh = revoked
	p := newPool(t, fv, 2, WithRevokeOnClose())
	poolToken(t, p, "a", "tok-1")
	poolToken(t, p, "b", "tok-2")
	poolToken(t, p, "a", "tok-1") // b is now the least recently used
	poolToken(t, p, "c", "tok-3") // evicts b
	if got := <-revoked; got != credsPath+"/lease-2" {
		t.Fatalf("evicting b revoked %s, want lease-2", got)
	}
	if p.Len() != 2 {
		t.Errorf("Len = %d, want 2", p.Len())
	}
	poolToken(t, p, "b", "tok-4") // b comes back: a new read; a is evicted
	if got := <-revoked; got != credsPath+"/lease-1" {
		t.Fatalf("evicting a revoked %s, want lease-1", got)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	got := fv.Revoked()
	slices.Sort(got)
	want := []string{credsPath + "/lease-1", credsPath + "/lease-2", credsPath + "/lease-3", credsPath + "/lease-4"}
	if !slices.Equal(got, want) {
		t.Errorf("revoked %v, want %v", got, want)
	}
	if _, err := p.Token(context.Background(), "a"); !errors.Is(err, ErrClosed) {
		t.Errorf("Token after Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestPoolWithoutRevokeOnClose: eviction and Close revoke nothing.
func TestPoolWithoutRevokeOnClose(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	p := newPool(t, fv, 1)
	poolToken(t, p, "a", "tok-1")
	poolToken(t, p, "b", "tok-2")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := fv.Revoked(); len(got) != 0 {
		t.Errorf("revoked %v", got)
	}
}

// TestPoolReportsFailedRevocations: an evicted Source's failed revocation
// goes to the hook and to Close's error.
func TestPoolReportsFailedRevocations(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fv.failRevoke = http.StatusForbidden
	opt, errs := hook()
	p := newPool(t, fv, 1, WithRevokeOnClose(), opt)
	poolToken(t, p, "a", "tok-1")
	poolToken(t, p, "b", "tok-2") // evicts a
	if err := <-errs; !strings.Contains(err.Error(), "revoking lease "+credsPath+"/lease-1") {
		t.Errorf("hook got %v", err)
	}
	err := p.Close()
	if err == nil || !strings.Contains(err.Error(), "closing 1 evicted Sources failed") ||
		!strings.Contains(err.Error(), "revoking lease "+credsPath+"/lease-2") {
		t.Errorf("Close = %v", err)
	}
}

// TestPoolRemove closes one user's Source now.
func TestPoolRemove(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	p := newPool(t, fv, 10, WithRevokeOnClose())
	poolToken(t, p, "a", "tok-1")
	if err := p.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if got := fv.Revoked(); len(got) != 1 || got[0] != credsPath+"/lease-1" {
		t.Errorf("revoked %v", got)
	}
	if err := p.Remove("nobody"); err != nil {
		t.Error(err)
	}
	poolToken(t, p, "a", "tok-2")
}

// TestPoolConcurrentUse: many goroutines, more users than room (run with -race).
func TestPoolConcurrentUse(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	p := newPool(t, fv, 4, WithRevokeOnClose())
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				user := fmt.Sprintf("u%d", (g+i)%8)
				tok, err := p.Token(context.Background(), user)
				if err != nil {
					t.Error(err)
					return
				}
				if tok.Extra("user_id") != user {
					t.Errorf("asked for %s, got %v's token", user, tok.Extra("user_id"))
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if n, r := fv.Calls(), len(fv.Revoked()); r != n {
		t.Errorf("%d leases read, %d revoked", n, r)
	}
}

// TestPoolTokenSource: a user's TokenSource goes through the pool on each
// call, so it survives the eviction of that user's Source.
func TestPoolTokenSource(t *testing.T) {
	var mu sync.Mutex
	var auths []string
	upstream := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
	}))
	defer upstream.Close()
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	p := newPool(t, fv, 1)
	client := HTTPClient(context.Background(), p.TokenSource("a"))
	get := func() {
		t.Helper()
		resp, err := client.Get(upstream.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	get()
	poolToken(t, p, "b", "tok-2") // evicts a
	get()
	if want := []string{"Bearer tok-1", "Bearer tok-3"}; !slices.Equal(auths, want) {
		t.Errorf("Authorization %q, want %q", auths, want)
	}
}

func TestNewPoolValidates(t *testing.T) {
	c := vaultClient(t, "http://127.0.0.1:1")
	if _, err := NewPool(c, credsPath, -1); err == nil {
		t.Error("negative size accepted")
	}
	if _, err := NewPool(c, credsPath, 1, WithUserID("x")); err == nil {
		t.Error("WithUserID accepted")
	}
	if _, err := NewPool(c, "", 1); err == nil {
		t.Error("empty path accepted")
	}
	p, err := NewPool(c, credsPath, 0)
	if err != nil || p.size != DefaultPoolSize {
		t.Errorf("size 0: %v, %v", p, err)
	}
}
