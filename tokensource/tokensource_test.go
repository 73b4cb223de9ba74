package tokensource

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"golang.org/x/oauth2"
)

func TestTokenMapsTheSecret(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv)
	tok := mustToken(t, s, "tok-1")
	if tok.Type() != "Bearer" || tok.TokenType != "Bearer" {
		t.Errorf("token type %q", tok.TokenType)
	}
	if want := c.Now().Add(time.Hour); !tok.Expiry.Equal(want) {
		t.Errorf("Expiry = %v, want expires_at %v", tok.Expiry, want)
	}
	if !tok.Valid() {
		t.Error("a fresh token is not Valid")
	}
	if got := tok.Extra("lease_id"); got != credsPath+"/lease-1" {
		t.Errorf("Extra(lease_id) = %v", got)
	}
	if got := fmt.Sprint(tok.Extra("scopes")); got != "[connect:fulfillment]" {
		t.Errorf("Extra(scopes) = %v", got)
	}
	if got := tok.Extra("created_at"); got != c.Now().Format(time.RFC3339) {
		t.Errorf("Extra(created_at) = %v", got)
	}
	if fv.methods[0] != http.MethodGet {
		t.Errorf("creds called with %s, want GET", fv.methods[0])
	}
	// Callers get copies: changing one does not change the Source's token.
	tok.AccessToken = "changed"
	mustToken(t, s, "tok-1")
	wantCalls(t, fv, 1)
}

func TestNewValidates(t *testing.T) {
	c := vaultClient(t, "http://127.0.0.1:1")
	if _, err := New(nil, credsPath); err == nil {
		t.Error("nil client accepted")
	}
	for _, p := range []string{"", "/", "/v1/"} {
		if _, err := New(c, p); err == nil {
			t.Errorf("path %q accepted", p)
		}
	}
	if _, err := New(c, credsPath, WithEarlyRefresh(-time.Second)); err == nil {
		t.Error("negative early refresh accepted")
	}
	s, err := New(c, "/v1/"+credsPath+"/")
	if err != nil || s.path != credsPath {
		t.Errorf("path normalised to %q (%v)", s.path, err)
	}
}

// TestReadsOncePerTokenLife: the default margin is 5 minutes before expiry.
func TestReadsOncePerTokenLife(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv)
	for range 1000 {
		mustToken(t, s, "tok-1")
	}
	c.Advance(55*time.Minute - time.Second)
	first := mustToken(t, s, "tok-1")
	wantCalls(t, fv, 1)

	c.Advance(time.Second) // 5 minutes left: re-read
	second := mustToken(t, s, "tok-2")
	wantCalls(t, fv, 2)
	if !second.Expiry.After(first.Expiry) {
		t.Errorf("the re-read token expires at %v, not after %v", second.Expiry, first.Expiry)
	}
	for range 1000 {
		mustToken(t, s, "tok-2")
	}
	wantCalls(t, fv, 2)
}

func TestEarlyRefreshMargin(t *testing.T) {
	for _, tc := range []struct {
		name     string
		life     time.Duration
		leaseCap time.Duration
		opts     []Option
		refresh  time.Duration // after the read
	}{
		{"default", time.Hour, 0, nil, 55 * time.Minute},
		{"option", time.Hour, 0, []Option{WithEarlyRefresh(10 * time.Minute)}, 50 * time.Minute},
		{"zero: at expiry", time.Hour, 0, []Option{WithEarlyRefresh(0)}, time.Hour},
		{"capped at a quarter of a short life", 20 * time.Second, 0, nil, 15 * time.Second},
		{"capped for a large option", 24 * time.Hour, 0, []Option{WithEarlyRefresh(12 * time.Hour)}, 18 * time.Hour},
		// A lease that cannot be renewed (see TestRenewsACappedLease for one that can).
		{"the lease ends first", time.Hour, 10 * time.Minute, nil, 7*time.Minute + 30*time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			fv := newFakeVault(t, c, tc.life)
			fv.leaseCap, fv.notRenew = tc.leaseCap, true
			s := newSource(t, fv, tc.opts...)
			tok := mustToken(t, s, "tok-1")
			end := tc.life
			if tc.leaseCap > 0 {
				end = tc.leaseCap
			}
			if want := c.Now().Add(end); !tok.Expiry.Equal(want) {
				t.Errorf("Expiry = %v, want %v", tok.Expiry, want)
			}
			c.Advance(tc.refresh - time.Second)
			mustToken(t, s, "tok-1")
			c.Advance(time.Second)
			mustToken(t, s, "tok-2")
			wantCalls(t, fv, 2)
		})
	}
}

// TestConcurrentColdCallersShareOneRead: callers without a token wait for
// the one read in flight.
func TestConcurrentColdCallersShareOneRead(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	gate, arrived := make(chan struct{}), make(chan struct{}, 1)
	fv.set(func(fv *fakeVault) { fv.gate, fv.arrived = gate, arrived })
	s := newSource(t, fv)

	const callers = 64
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := s.Token()
			if err == nil && tok.AccessToken != "tok-1" {
				err = fmt.Errorf("got %s", tok.AccessToken)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	<-arrived
	time.Sleep(50 * time.Millisecond) // let the others pile up behind the read
	fv.set(func(fv *fakeVault) { fv.gate = nil })
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	wantCalls(t, fv, 1)
}

// TestCallersWithAValidTokenDoNotWaitForTheReRead: in the margin, one caller
// re-reads; the others get the current token at once.
func TestCallersWithAValidTokenDoNotWaitForTheReRead(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv)
	mustToken(t, s, "tok-1")

	gate, arrived := make(chan struct{}), make(chan struct{}, 1)
	fv.set(func(fv *fakeVault) { fv.gate, fv.arrived = gate, arrived })
	c.Advance(56 * time.Minute)
	done := make(chan *oauth2.Token)
	go func() {
		tok, _ := s.Token()
		done <- tok
	}()
	<-arrived // the re-read is in flight and blocked
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if tok, err := s.Token(); err != nil || tok.AccessToken != "tok-1" {
				t.Errorf("during the re-read: %v, %v", tok, err)
			}
		}()
	}
	wg.Wait() // would hang if they waited for the gated read
	fv.set(func(fv *fakeVault) { fv.gate = nil })
	close(gate)
	if tok := <-done; tok == nil || tok.AccessToken != "tok-2" {
		t.Fatalf("the re-reading caller got %v", tok)
	}
	mustToken(t, s, "tok-2")
	wantCalls(t, fv, 2)
}

// TestConcurrentUse hammers a Source from many goroutines while its clock
// runs through several token lives (run with -race).
func TestConcurrentUse(t *testing.T) {
	for _, tc := range []struct {
		name     string
		leaseCap time.Duration
		// The clock runs step per millisecond, so it moves while a request
		// is out: a lease that ends with the token can look capped by a few
		// minutes, and is then renewed once; notRenew rules that out.
		notRenew           bool
		step               time.Duration // the clock's step per millisecond
		minReads, maxReads int
		renewals           func(n int) bool
	}{
		// A token is re-read 55 minutes after it was read: at most 6 reads in 5 hours.
		{"lease to the token's expiry", 0, true, time.Minute, 5, 6, func(n int) bool { return n == 0 }},
		// Renewed every 15 minutes, re-read about 57 minutes after each
		// read. A request can take minutes of this clock under -race (a
		// renewal then finds its lease gone and a read follows), so only the
		// bounds are sure: renewals, and fewer reads than the 20 of a read
		// every 15 minutes. TestRenewsACappedLease counts exactly.
		{"lease capped at 20 minutes", 20 * time.Minute, false, 10 * time.Second, 1, 12, func(n int) bool { return n > 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			fv := newFakeVault(t, c, time.Hour)
			fv.leaseCap, fv.notRenew = tc.leaseCap, tc.notRenew
			s := newSource(t, fv)
			var stop atomic.Bool
			var wg sync.WaitGroup
			var got atomic.Int64
			for range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for !stop.Load() {
						before := c.Now()
						tok, err := s.Token()
						if err != nil {
							t.Error(err)
							return
						}
						if !tok.Expiry.After(before) {
							t.Errorf("handed out an expired token")
							return
						}
						got.Add(1)
					}
				}()
			}
			for range 5 * time.Hour / tc.step {
				c.Advance(tc.step)
				time.Sleep(time.Millisecond)
			}
			stop.Store(true)
			wg.Wait()
			if n, r := fv.Calls(), fv.Renews(); n < tc.minReads || n > tc.maxReads || !tc.renewals(r) {
				t.Errorf("%d reads and %d renewals over 5 hours of 1-hour tokens (%d calls to Token)", n, r, got.Load())
			}
		})
	}
}

func TestUserIDIsWritten(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv, WithUserID("store-1234"))
	tok := mustToken(t, s, "tok-1")
	if fv.methods[0] != http.MethodPut {
		t.Errorf("creds called with %s, want PUT", fv.methods[0])
	}
	if len(fv.bodies[0]) != 1 || fv.bodies[0]["user_id"] != "store-1234" {
		t.Errorf("body %v, want only user_id", fv.bodies[0])
	}
	if tok.Extra("user_id") != "store-1234" {
		t.Errorf("Extra(user_id) = %v", tok.Extra("user_id"))
	}
	c.Advance(56 * time.Minute)
	mustToken(t, s, "tok-2")
	if fv.methods[1] != http.MethodPut || fv.bodies[1]["user_id"] != "store-1234" {
		t.Errorf("the re-read is %s %v", fv.methods[1], fv.bodies[1])
	}
}

func TestCloseRevokesLeases(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv, WithRevokeOnClose())
	mustToken(t, s, "tok-1")
	c.Advance(56 * time.Minute)
	mustToken(t, s, "tok-2")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	got := fv.Revoked()
	want := []string{credsPath + "/lease-1", credsPath + "/lease-2"} // tok-1 has 4 minutes left
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("revoked %v, want %v", got, want)
	}
	if _, err := s.Token(); !errors.Is(err, ErrClosed) {
		t.Errorf("Token after Close: %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil || len(fv.Revoked()) != 2 {
		t.Errorf("a second Close: %v, revoked %v", err, fv.Revoked())
	}
	wantCalls(t, fv, 2)
}

func TestCloseSkipsExpiredLeases(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv, WithRevokeOnClose())
	mustToken(t, s, "tok-1")
	c.Advance(56 * time.Minute)
	mustToken(t, s, "tok-2")
	c.Advance(5 * time.Minute) // tok-1 and its lease have expired
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := fv.Revoked(); fmt.Sprint(got) != "["+credsPath+"/lease-2]" {
		t.Errorf("revoked %v, want only lease-2", got)
	}
}

func TestCloseWithoutRevokeOnClose(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv)
	mustToken(t, s, "tok-1")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := fv.Revoked(); len(got) != 0 {
		t.Errorf("revoked %v without WithRevokeOnClose", got)
	}
	if _, err := s.Token(); !errors.Is(err, ErrClosed) {
		t.Errorf("Token after Close: %v", err)
	}
}

func TestCloseReportsFailedRevocation(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fv.failRevoke = http.StatusForbidden
	s := newSource(t, fv, WithRevokeOnClose())
	mustToken(t, s, "tok-1")
	err := s.Close()
	if err == nil || !strings.Contains(err.Error(), "revoking lease "+credsPath+"/lease-1") || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("Close = %v", err)
	}
}

// TestCloseCancelsARead: Close does not wait out a hung Vault.
func TestCloseCancelsARead(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	gate, arrived := make(chan struct{}), make(chan struct{}, 1)
	fv.set(func(fv *fakeVault) { fv.gate, fv.arrived = gate, arrived })
	defer close(gate)
	s := newSource(t, fv)
	errc := make(chan error)
	go func() { _, err := s.Token(); errc <- err }()
	<-arrived
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("the cancelled read returned %v, want ErrClosed", err)
	}
}

func TestErrorsSurface(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(fv *fakeVault)
		client func(c *api.Client)
		want   string
	}{
		{"permission denied", nil, func(c *api.Client) { c.SetToken("wrong") }, "permission denied"},
		{"server error", func(fv *fakeVault) { fv.failCreds = []int{500} }, nil, "injected failure 500"},
		{"no access_token", func(fv *fakeVault) {
			fv.mutate = func(d, _ map[string]any) { delete(d, "access_token") }
		}, nil, "no access_token"},
		{"bad expires_at", func(fv *fakeVault) {
			fv.mutate = func(d, _ map[string]any) { d["expires_at"] = "tomorrow" }
		}, nil, "expires_at is not RFC 3339"},
		{"no expiry at all", func(fv *fakeVault) {
			fv.mutate = func(d, sec map[string]any) { delete(d, "expires_at"); sec["lease_duration"] = 0 }
		}, nil, "neither expires_at nor a lease"},
		{"expired on arrival", func(fv *fakeVault) {
			fv.mutate = func(d, _ map[string]any) { d["expires_at"] = fv.clock.Now().Add(-time.Minute).Format(time.RFC3339) }
		}, nil, "already past"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			fv := newFakeVault(t, c, time.Hour)
			if tc.setup != nil {
				fv.set(tc.setup)
			}
			s := newSource(t, fv)
			if tc.client != nil {
				tc.client(s.client)
			}
			tok, err := s.Token()
			if err == nil || tok != nil {
				t.Fatalf("Token = %v, %v; want an error", tok, err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), credsPath) {
				t.Errorf("error %q does not name %q and the path", err, tc.want)
			}
			if strings.Contains(err.Error(), "tok-") || strings.Contains(err.Error(), appToken) {
				t.Errorf("error %q contains a token", err)
			}
		})
	}
	t.Run("not found", func(t *testing.T) {
		c := newClock()
		fv := newFakeVault(t, c, time.Hour)
		s, err := New(vaultClient(t, fv.srv.URL), "instacart/creds/nope")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Token(); err == nil || !strings.Contains(err.Error(), "instacart/creds/nope") {
			t.Errorf("Token = %v", err)
		}
	})
}

// TestFailedReReadKeepsTheValidToken: a failed early re-read serves the
// current token and retries later; once the token has expired the error
// surfaces.
func TestFailedReReadKeepsTheValidToken(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv)
	mustToken(t, s, "tok-1")

	fv.set(func(fv *fakeVault) { fv.failCreds = []int{503, 503, 503, 503, 503, 503, 503, 503, 503, 503} })
	c.Advance(56 * time.Minute) // 4 minutes left
	mustToken(t, s, "tok-1")
	wantCalls(t, fv, 2)
	mustToken(t, s, "tok-1") // backing off: 30 s (an eighth of 4 minutes)
	wantCalls(t, fv, 2)
	c.Advance(30 * time.Second)
	mustToken(t, s, "tok-1")
	wantCalls(t, fv, 3)

	c.Advance(4 * time.Minute) // tok-1 has expired; Vault still fails
	if tok, err := s.Token(); err == nil || !strings.Contains(err.Error(), "injected failure 503") {
		t.Fatalf("Token after expiry = %v, %v; want Vault's error", tok, err)
	}
	fv.set(func(fv *fakeVault) { fv.failCreds = nil })
	mustToken(t, s, "tok-5")
}

// TestHTTPClient: every request carries the Source's current token, and the
// early re-read is not defeated by oauth2's own 10-second expiry delta.
func TestHTTPClient(t *testing.T) {
	var auths []string
	var mu sync.Mutex
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
	}))
	defer upstream.Close()
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv)

	var viaBase atomic.Int64
	base := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		viaBase.Add(1)
		return http.DefaultTransport.RoundTrip(r)
	})}
	client := HTTPClient(context.WithValue(context.Background(), oauth2.HTTPClient, base), s)
	get := func() {
		t.Helper()
		resp, err := client.Get(upstream.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	get()
	get()
	c.Advance(56 * time.Minute)
	get()
	want := []string{"Bearer tok-1", "Bearer tok-1", "Bearer tok-2"}
	if fmt.Sprint(auths) != fmt.Sprint(want) {
		t.Errorf("Authorization headers %q, want %q", auths, want)
	}
	if viaBase.Load() != 3 {
		t.Errorf("%d requests went through the context's client, want 3", viaBase.Load())
	}

	// Without a client in the context, the default transport is used.
	plain := HTTPClient(context.Background(), s)
	resp, err := plain.Get(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// A Source error fails the request, without a token in the message.
	s.Close()
	_, err = plain.Get(upstream.URL)
	if !errors.Is(err, ErrClosed) {
		t.Errorf("request after Close: %v", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
