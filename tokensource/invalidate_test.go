package tokensource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// fakeConnect answers 401 to the tokens it refuses and 200 to the others,
// and records each request's token and body.
type fakeConnect struct {
	srv *httptest.Server

	mu      sync.Mutex
	refuse  func(token string) bool
	tokens  []string
	bodies  []string
	arrived chan struct{} // if set: each refused request signals it...
	release chan struct{} // ...and waits for this before its 401
}

func newFakeConnect(t *testing.T, refuse ...string) *fakeConnect {
	t.Helper()
	fc := &fakeConnect{}
	fc.refuseOnly(refuse...)
	fc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		body, _ := io.ReadAll(r.Body)
		fc.mu.Lock()
		fc.tokens = append(fc.tokens, tok)
		fc.bodies = append(fc.bodies, string(body))
		refused, arrived, release := fc.refuse(tok), fc.arrived, fc.release
		fc.mu.Unlock()
		if !refused {
			return
		}
		if arrived != nil {
			arrived <- struct{}{}
			<-release
		}
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"errors":[{"message":"The access token is invalid, expired or revoked."}]}`)
	}))
	t.Cleanup(fc.srv.Close)
	return fc
}

// refuseOnly makes Connect refuse these tokens.
func (fc *fakeConnect) refuseOnly(tokens ...string) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.refuse = func(tok string) bool {
		for _, r := range tokens {
			if tok == r {
				return true
			}
		}
		return false
	}
}

// Tokens is the token of each request so far.
func (fc *fakeConnect) Tokens() []string {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return append([]string(nil), fc.tokens...)
}

// post sends body to Connect with client and returns the status.
func (fc *fakeConnect) post(t *testing.T, client *http.Client, body string) int {
	t.Helper()
	resp, err := client.Post(fc.srv.URL+"/v2/fulfillment/users", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func wantStrings(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: %q, want %q", what, got, want)
	}
}

// TestRefusedTokenIsReplacedOnce: a 401 from Connect makes the client
// revoke the refused token's lease, read the creds path once (naming that
// lease in the header that gets past Vault Proxy's cache) and send the
// request once more, body included, with the new token; the next request
// reads nothing. Close revokes the new lease only.
func TestRefusedTokenIsReplacedOnce(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fc := newFakeConnect(t, "tok-1")
	s := newSource(t, fv, WithRevokeOnClose())
	client := HTTPClient(context.Background(), s)

	mustToken(t, s, "tok-1")
	if got := fc.post(t, client, `{"n":1}`); got != http.StatusOK {
		t.Fatalf("the request got %d, want 200 after the retry", got)
	}
	wantStrings(t, "Connect saw the tokens", fc.Tokens(), "tok-1", "tok-2")
	fc.mu.Lock()
	wantStrings(t, "and the bodies", fc.bodies, `{"n":1}`, `{"n":1}`)
	fc.mu.Unlock()
	lease1 := credsPath + "/lease-1"
	wantStrings(t, "Vault saw", fv.Events(), "creds", "revoke "+lease1, "creds")
	wantStrings(t, "the creds calls named the lease they replace", fv.Replaces(), "", lease1)

	if got := fc.post(t, client, `{"n":2}`); got != http.StatusOK {
		t.Fatalf("the next request got %d", got)
	}
	wantCalls(t, fv, 2)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wantStrings(t, "revoked", fv.Revoked(), lease1, credsPath+"/lease-2")
}

// TestRefusedTwiceIsReturned: when Connect refuses the new token too, the
// client returns that second 401: one fresh read and one retry per request,
// never a loop.
func TestRefusedTwiceIsReturned(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fc := newFakeConnect(t, "tok-1", "tok-2", "tok-3")
	s := newSource(t, fv)
	client := HTTPClient(context.Background(), s)

	if got := fc.post(t, client, `{}`); got != http.StatusUnauthorized {
		t.Fatalf("the request got %d, want Connect's second 401", got)
	}
	wantStrings(t, "Connect saw", fc.Tokens(), "tok-1", "tok-2")
	wantCalls(t, fv, 2)

	// The next request starts with tok-2, refused: one more read, one retry.
	if got := fc.post(t, client, `{}`); got != http.StatusUnauthorized {
		t.Fatalf("the next request got %d", got)
	}
	wantStrings(t, "Connect saw", fc.Tokens(), "tok-1", "tok-2", "tok-2", "tok-3")
	wantCalls(t, fv, 3)
}

// TestRefusedTokenServedAgain: when the fresh read brings back the refused
// token (the engine still serves it), the client returns the 401 without a
// retry, reports why to the error hook, and reads for that token again only
// after refusedRetry, not on every request.
func TestRefusedTokenServedAgain(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fv.mutate = func(d, _ map[string]any) { d["access_token"] = "tok-1" }
	fc := newFakeConnect(t, "tok-1")
	opt, errs := hook()
	s := newSource(t, fv, opt)
	client := HTTPClient(context.Background(), s)

	if got := fc.post(t, client, `{}`); got != http.StatusUnauthorized {
		t.Fatalf("got %d, want the 401", got)
	}
	wantStrings(t, "Connect saw", fc.Tokens(), "tok-1")
	wantCalls(t, fv, 2)
	if err := <-errs; !strings.Contains(err.Error(), "same token") || !strings.Contains(err.Error(), "vault delete instacart/cache/fulfillment") {
		t.Errorf("hook got %v, want the same-token error naming the flush", err)
	}

	for range 3 {
		if got := fc.post(t, client, `{}`); got != http.StatusUnauthorized {
			t.Fatalf("got %d", got)
		}
	}
	wantCalls(t, fv, 2) // no read per refused request

	c.Advance(refusedRetry)
	fv.set(func(fv *fakeVault) { fv.mutate = nil }) // an operator flushed meanwhile
	if got := fc.post(t, client, `{}`); got != http.StatusOK {
		t.Fatalf("after %v: got %d, want the retry with a new token to work", refusedRetry, got)
	}
	wantCalls(t, fv, 3)
}

// TestConcurrentRefusalsShareOneRead: requests refused with the same token
// at once make one fresh read between them, and each is retried with the
// new token.
func TestConcurrentRefusalsShareOneRead(t *testing.T) {
	const n = 8
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fc := newFakeConnect(t, "tok-1")
	fc.arrived, fc.release = make(chan struct{}, n), make(chan struct{})
	s := newSource(t, fv)
	joined := make(chan struct{}, n)
	s.joined = func() { joined <- struct{}{} }
	client := HTTPClient(context.Background(), s)
	mustToken(t, s, "tok-1")

	statuses := make(chan int, n)
	for range n {
		go func() {
			resp, err := client.Get(fc.srv.URL)
			if err != nil {
				t.Error(err)
				statuses <- 0
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	for range n { // every request was sent with tok-1 before any 401
		<-fc.arrived
	}
	gate, arrived := gated(t, fv)
	close(fc.release)
	<-arrived // the fresh read is at Vault, held there...
	for range n {
		<-joined // ...until every refused request waits for it
	}
	open(fv, gate)
	for range n {
		if st := <-statuses; st != http.StatusOK {
			t.Errorf("a request got %d, want 200", st)
		}
	}
	wantCalls(t, fv, 2)
	wantStrings(t, "revoked", fv.Revoked(), credsPath+"/lease-1")
	retried := 0
	for _, tok := range fc.Tokens() {
		if tok == "tok-2" {
			retried++
		}
	}
	if retried != n {
		t.Errorf("%d requests retried with tok-2, want %d", retried, n)
	}
}

// TestFailedRevocationStillReads: the refused token's lease cannot be
// revoked; the fresh read happens anyway and the hook hears why.
func TestFailedRevocationStillReads(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fv.failRevoke = http.StatusForbidden
	fc := newFakeConnect(t, "tok-1")
	opt, errs := hook()
	s := newSource(t, fv, opt)
	client := HTTPClient(context.Background(), s)

	if got := fc.post(t, client, `{}`); got != http.StatusOK {
		t.Fatalf("got %d, want 200 after the retry", got)
	}
	wantStrings(t, "Vault saw", fv.Events(), "creds", "revoke "+credsPath+"/lease-1", "creds")
	if err := <-errs; !strings.Contains(err.Error(), "revoking lease "+credsPath+"/lease-1") || !strings.Contains(err.Error(), "reading a new token anyway") {
		t.Errorf("hook got %v", err)
	}
}

// TestFailedFreshReadReturnsThe401: Vault fails the fresh read; the client
// returns Connect's 401 (the hook has Vault's error), and the next request
// reads again.
func TestFailedFreshReadReturnsThe401(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fc := newFakeConnect(t, "tok-1")
	opt, errs := hook()
	s := newSource(t, fv, opt)
	client := HTTPClient(context.Background(), s)
	mustToken(t, s, "tok-1")

	fv.set(func(fv *fakeVault) { fv.failCreds = []int{503} })
	if got := fc.post(t, client, `{}`); got != http.StatusUnauthorized {
		t.Fatalf("got %d, want Connect's 401", got)
	}
	if err := <-errs; !strings.Contains(err.Error(), "injected failure 503") {
		t.Errorf("hook got %v", err)
	}
	if got := fc.post(t, client, `{}`); got != http.StatusOK {
		t.Fatalf("the next request got %d", got)
	}
	wantStrings(t, "Connect saw", fc.Tokens(), "tok-1", "tok-3")
}

// TestUnrepeatableBodyIsNotRetried: a request whose body cannot be read
// again gets its 401; the token is replaced for the next request.
func TestUnrepeatableBodyIsNotRetried(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fc := newFakeConnect(t, "tok-1")
	s := newSource(t, fv)
	client := HTTPClient(context.Background(), s)

	req, err := http.NewRequest(http.MethodPost, fc.srv.URL, io.NopCloser(strings.NewReader(`{}`))) // no GetBody
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("got %d, want the 401", resp.StatusCode)
	}
	if got := fc.post(t, client, `{}`); got != http.StatusOK {
		t.Fatalf("the next request got %d", got)
	}
	wantStrings(t, "Connect saw", fc.Tokens(), "tok-1", "tok-2")
	wantCalls(t, fv, 2)
}

// TestInvalidate: the method itself. A token already replaced reads
// nothing; a nil token is refused; after Close it says so.
func TestInvalidate(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv)
	ctx := context.Background()
	old := mustToken(t, s, "tok-1")
	if err := s.Invalidate(ctx, old); err != nil {
		t.Fatal(err)
	}
	mustToken(t, s, "tok-2")
	if err := s.Invalidate(ctx, old); err != nil { // tok-1 is no longer current
		t.Fatal(err)
	}
	mustToken(t, s, "tok-2")
	wantCalls(t, fv, 2)
	if err := s.Invalidate(ctx, nil); err == nil {
		t.Error("Invalidate(nil) = nil")
	}
	s.Close()
	if err := s.Invalidate(ctx, old); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

// TestInvalidateWaitsForAReReadInFlight: a refusal that arrives while an
// early re-read is out waits for it; when that read brings a new token,
// there is no fresh read.
func TestInvalidateWaitsForAReReadInFlight(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	s := newSource(t, fv)
	old := mustToken(t, s, "tok-1")
	joined := make(chan struct{}, 1)
	s.joined = func() { joined <- struct{}{} }

	gate, arrived := gated(t, fv)
	c.Advance(56 * time.Minute)
	go func() { _, _ = s.Token() }() // starts the early re-read, held at Vault
	<-arrived
	done := make(chan error, 1)
	go func() { done <- s.Invalidate(context.Background(), old) }()
	<-joined
	open(fv, gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mustToken(t, s, "tok-2")
	wantCalls(t, fv, 2)
	if got := fv.Revoked(); len(got) != 0 {
		t.Errorf("revoked %v: the re-read replaced the token, nothing to heal", got)
	}
}

// TestPoolHealsAUsersToken: a Pool's per-user source replaces a refused
// token with a fresh write of the user id, past the Proxy's cache too.
func TestPoolHealsAUsersToken(t *testing.T) {
	c := newClock()
	fv := newFakeVault(t, c, time.Hour)
	fc := newFakeConnect(t, "tok-1")
	p := newPool(t, fv, 2)
	client := HTTPClient(context.Background(), p.TokenSource("store-1"))

	if got := fc.post(t, client, `{}`); got != http.StatusOK {
		t.Fatalf("got %d", got)
	}
	wantStrings(t, "Connect saw", fc.Tokens(), "tok-1", "tok-2")
	wantStrings(t, "the writes named", fv.Replaces(), "", credsPath+"/lease-1")
	if fv.methods[1] != http.MethodPut || fv.bodies[1]["user_id"] != "store-1" {
		t.Errorf("the fresh read is %s %v, want a PUT of the user id", fv.methods[1], fv.bodies[1])
	}
	// A user the pool holds no Source for: nothing to invalidate.
	if err := p.Invalidate(context.Background(), "store-9", &oauth2.Token{AccessToken: "tok-1"}); err != nil {
		t.Fatal(err)
	}
	wantCalls(t, fv, 2)
}
