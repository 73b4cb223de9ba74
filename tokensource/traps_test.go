package tokensource

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// gated makes the fake's creds calls wait for the returned gate (closed by
// the test, or at cleanup) and signal arrived when they reach it.
func gated(t *testing.T, fv *fakeVault) (gate chan struct{}, arrived chan struct{}) {
	t.Helper()
	gate, arrived = make(chan struct{}), make(chan struct{}, 16)
	fv.set(func(fv *fakeVault) { fv.gate, fv.arrived = gate, arrived })
	return gate, arrived
}

// open lets gated creds calls through, now and from now on.
func open(fv *fakeVault, gate chan struct{}) {
	fv.set(func(fv *fakeVault) { fv.gate = nil })
	close(gate)
}

// TestTokenContextBoundsAColdRead: a caller without a token waits for the
// read only as long as its context allows; the read goes on and its token
// serves the next caller, without a second read.
func TestTokenContextBoundsAColdRead(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	gate, arrived := gated(t, fv)
	s := newSource(t, fv)

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := s.TokenContext(ctx); errc <- err }()
	<-arrived // the read is at Vault, held there
	cancel()
	err := <-errc
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), credsPath) {
		t.Fatalf("TokenContext after cancel = %v, want context.Canceled naming the path", err)
	}

	// A deadline that passes while the read is held.
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer dcancel()
	if _, err := s.TokenContext(dctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("TokenContext past its deadline = %v, want context.DeadlineExceeded", err)
	}

	open(fv, gate)
	mustToken(t, s, "tok-1") // the read the callers gave up on
	wantCalls(t, fv, 1)
}

// TestTokenContextDuringAnEarlyReRead: the caller that starts an early
// re-read gets the current, still valid token when its context ends first.
func TestTokenContextDuringAnEarlyReRead(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv)
	mustToken(t, s, "tok-1")

	gate, arrived := gated(t, fv)
	c.Advance(56 * time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		tok string
		err error
	}
	done := make(chan result, 1)
	go func() {
		tok, err := s.TokenContext(ctx)
		if tok == nil {
			done <- result{"", err}
			return
		}
		done <- result{tok.AccessToken, err}
	}()
	<-arrived
	cancel()
	if r := <-done; r.err != nil || r.tok != "tok-1" {
		t.Fatalf("the re-reading caller whose context ended got %q, %v; want tok-1", r.tok, r.err)
	}
	s.mu.Lock()
	f := s.flight // the re-read, still held at the fake
	s.mu.Unlock()
	open(fv, gate)
	<-f.done
	mustToken(t, s, "tok-2")
	wantCalls(t, fv, 2)
}

// TestHTTPClientRequestContextBoundsTheRead: a request's context bounds the
// wait for its token.
func TestHTTPClientRequestContextBoundsTheRead(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer upstream.Close()
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	gate, arrived := gated(t, fv)
	s := newSource(t, fv)
	client := HTTPClient(context.Background(), s)

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, upstream.URL, strings.NewReader("{}"))
	errc := make(chan error, 1)
	go func() {
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-arrived
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("request whose context ended while the token was read: %v, want context.Canceled", err)
	}
	open(fv, gate)
	resp, err := client.Get(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	wantCalls(t, fv, 1)
}

// hook collects the errors a Source reports.
func hook() (Option, chan error) {
	ch := make(chan error, 16)
	return WithErrorHook(func(err error) { ch <- err }), ch
}

// TestErrorHookSeesAFailedEarlyReRead: the failure a caller never sees (it
// gets the current token) reaches the hook, each time.
func TestErrorHookSeesAFailedEarlyReRead(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	opt, errs := hook()
	s := newSource(t, fv, opt)
	mustToken(t, s, "tok-1")
	if len(errs) != 0 {
		t.Fatalf("hook called after a good read: %v", <-errs)
	}

	fv.set(func(fv *fakeVault) { fv.failCreds = []int{503, 503} })
	c.Advance(56 * time.Minute)
	mustToken(t, s, "tok-1")
	err := <-errs
	for _, want := range []string{"injected failure 503", credsPath, "serving the current token", "trying again in 30s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("hook error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "tok-") {
		t.Errorf("hook error %q contains a token", err)
	}
	c.Advance(30 * time.Second)
	mustToken(t, s, "tok-1")
	if err := <-errs; !strings.Contains(err.Error(), "injected failure 503") {
		t.Errorf("second failure: %v", err)
	}
	c.Advance(30 * time.Second)
	mustToken(t, s, "tok-4")
	if len(errs) != 0 {
		t.Errorf("hook called after the re-read worked: %v", <-errs)
	}
}

// TestErrorHookSeesAColdFailure: a read whose caller gave up still reports
// its failure.
func TestErrorHookSeesAColdFailure(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fv.failCreds = []int{500}
	gate, arrived := gated(t, fv)
	opt, errs := hook()
	s := newSource(t, fv, opt)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := s.TokenContext(ctx); errc <- err }()
	<-arrived
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("TokenContext = %v", err)
	}
	open(fv, gate)
	if err := <-errs; !strings.Contains(err.Error(), "injected failure 500") {
		t.Errorf("hook got %v", err)
	}
}

// TestRenewsACappedLease: when the role's ttl caps the lease below the
// token's life, the Source renews the lease (lease id in the URL) until the
// token's expires_at, handing out the same token with a later Expiry, and
// reads a new token only then: one lease and one read per token life.
func TestRenewsACappedLease(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fv.leaseCap = 10 * time.Minute
	opt, errs := hook()
	s := newSource(t, fv, opt, WithRevokeOnClose())
	start := c.Now()
	tok := mustToken(t, s, "tok-1")
	if !tok.Expiry.Equal(start.Add(10 * time.Minute)) {
		t.Fatalf("Expiry = %v, want the lease's end", tok.Expiry)
	}
	// Each lease is renewed a quarter of its 10 minutes before it ends: at
	// 7m30s, 15m, ... 52m30s, when the renewal reaches the token's expiry.
	for i := 1; ; i++ {
		c.Advance(7*time.Minute + 30*time.Second - time.Second)
		mustToken(t, s, "tok-1")
		if got := fv.Renews(); got != i-1 {
			t.Fatalf("renewal %d: %d renewals before the margin", i, got)
		}
		c.Advance(time.Second)
		tok = mustToken(t, s, "tok-1")
		if got := fv.Renews(); got != i {
			t.Fatalf("%d renewals, want %d", got, i)
		}
		want := c.Now().Add(10 * time.Minute)
		if want.After(start.Add(time.Hour)) {
			want = start.Add(time.Hour)
		}
		if !tok.Expiry.Equal(want) {
			t.Fatalf("after renewal %d: Expiry = %v, want %v", i, tok.Expiry, want)
		}
		if tok.Extra("lease_id") != credsPath+"/lease-1" {
			t.Fatalf("lease_id %v", tok.Extra("lease_id"))
		}
		if tok.Expiry.Equal(start.Add(time.Hour)) {
			if i != 7 {
				t.Fatalf("the lease reached the token's expiry after %d renewals, want 7", i)
			}
			break
		}
	}
	wantCalls(t, fv, 1)
	// The lease now ends with the token: the Source re-reads at the usual
	// margin (a quarter of the 7m30s left), not renews.
	refresh := tok.Expiry.Add(-tok.Expiry.Sub(c.Now()) / 4)
	c.Advance(refresh.Sub(c.Now()) - time.Second)
	mustToken(t, s, "tok-1")
	c.Advance(time.Second)
	mustToken(t, s, "tok-2")
	wantCalls(t, fv, 2)
	if fv.Renews() != 7 {
		t.Errorf("%d renewals, want 7", fv.Renews())
	}
	for _, b := range fv.renewBody {
		if len(b) != 0 {
			t.Fatalf("renewal body %v, want none: an increment would override the role's ttl", b)
		}
	}
	if len(errs) != 0 {
		t.Errorf("hook: %v", <-errs)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// lease-1 (renewed to the token's expiry, still running) and lease-2.
	if got := strings.Join(fv.Revoked(), " "); got != credsPath+"/lease-1 "+credsPath+"/lease-2" {
		t.Errorf("revoked %s", got)
	}
}

// TestRenewalThatCannotExtendReadsANewToken: a lease capped by max_ttl (or
// the mount's, or the Vault token's TTL) stops growing; the Source then reads
// a new token, quietly.
func TestRenewalThatCannotExtendReadsANewToken(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fv.leaseCap, fv.maxTTL = 10*time.Minute, 15*time.Minute
	opt, errs := hook()
	s := newSource(t, fv, opt)
	mustToken(t, s, "tok-1")
	c.Advance(7*time.Minute + 30*time.Second)
	tok := mustToken(t, s, "tok-1") // renewed, up to 15 minutes from the read
	if fv.Renews() != 1 {
		t.Fatalf("%d renewals", fv.Renews())
	}
	// The lease now ends in 7m30s: re-read or renew a quarter of that before.
	c.Advance(tok.Expiry.Sub(c.Now()) * 3 / 4)
	mustToken(t, s, "tok-2")
	if fv.Renews() != 2 {
		t.Errorf("%d renewals, want 2 (the second did not extend)", fv.Renews())
	}
	wantCalls(t, fv, 2)
	if len(errs) != 0 {
		t.Errorf("hook called for a renewal that could not extend: %v", <-errs)
	}
}

// TestFailedRenewalFallsBackToARead: a renewal Vault refuses (a policy
// without the renew path, a lease revoked meanwhile) is reported, and a new
// token is read.
func TestFailedRenewalFallsBackToARead(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fv.leaseCap = 10 * time.Minute
	fv.failRenew = []int{http.StatusForbidden}
	opt, errs := hook()
	s := newSource(t, fv, opt)
	mustToken(t, s, "tok-1")
	c.Advance(7*time.Minute + 30*time.Second)
	mustToken(t, s, "tok-2")
	err := <-errs
	for _, want := range []string{"renewing the lease " + credsPath + "/lease-1", "injected failure 403", "reading a new token instead"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("hook error %q does not say %q", err, want)
		}
	}
	// tok-2's lease is renewed as usual.
	c.Advance(7*time.Minute + 30*time.Second)
	mustToken(t, s, "tok-2")
	if fv.Renews() != 2 {
		t.Errorf("%d renewals, want 2", fv.Renews())
	}
}

// TestNotCappedIsNotRenewed: a lease that ends with the token (to the
// second, as the engine's do) is never renewed.
func TestNotCappedIsNotRenewed(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fv.mutate = func(_, sec map[string]any) { sec["lease_duration"] = 3599 }
	s := newSource(t, fv)
	mustToken(t, s, "tok-1")
	c.Advance(56 * time.Minute)
	mustToken(t, s, "tok-2")
	if fv.Renews() != 0 {
		t.Errorf("%d renewals of an uncapped lease", fv.Renews())
	}
}

// TestRevokeNamesTheLeaseInTheURL: Close revokes with
// PUT sys/leases/revoke/<lease_id> and an empty body, which a policy can
// confine to the role's leases (the fake denies a lease_id parameter, as the
// shipped app policy does).
func TestRevokeNamesTheLeaseInTheURL(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv, WithRevokeOnClose())
	mustToken(t, s, "tok-1")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := fv.Revoked(); len(got) != 1 || got[0] != credsPath+"/lease-1" {
		t.Fatalf("revoked %v", got)
	}
	if len(fv.revokeBody[0]) != 0 {
		t.Errorf("revocation body %v, want none", fv.revokeBody[0])
	}
}
