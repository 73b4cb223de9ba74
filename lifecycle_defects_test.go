package instacart

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// One test per defect of the token lifecycle fixed by the refactor (see
// lifecycle.go). Each drives the engine through requests as Vault sends them
// and forces its interleaving with channels: Connect requests parked at a
// gate in front of the fake (defectGate), storage calls parked by
// gatedStorage. Bounded waits only guard against a hung test.

// hangGuard bounds every wait for something the test has made certain to
// happen; reaching it means the engine never did it.
const hangGuard = 10 * time.Second

// defectGate is a Connect host in front of a fake. Requests to a parked path
// wait until the test lets them through one by one (or opens the path);
// requests to a path it turns away get an error status without reaching the
// fake. It counts, per authorization code, the token requests carrying it and
// those that reached the fake.
type defectGate struct {
	URL  string
	fake *connectfake.Server

	mu        sync.Mutex
	parking   map[string]bool
	turnAway  map[string][]int // path -> statuses to answer the next requests with
	carrying  map[string]int   // code -> token requests carrying it
	forwarded map[string]int   // code -> of those, how many reached the fake
	calls     []*heldRequest
	arrived   chan *heldRequest
	minted    []string // access tokens the fake answered through the gate, in order
}

// heldRequest is one request held at the gate.
type heldRequest struct {
	path    string
	release chan struct{}
	once    sync.Once
	// left is closed when the client went away while the call was parked.
	left chan struct{}
}

// let lets the call through to the fake.
func (c *heldRequest) let() { c.once.Do(func() { close(c.release) }) }

func newDefectGate(t *testing.T, fake *connectfake.Server) *defectGate {
	t.Helper()
	g := &defectGate{
		fake:      fake,
		parking:   map[string]bool{},
		turnAway:  map[string][]int{},
		carrying:  map[string]int{},
		forwarded: map[string]int{},
		arrived:   make(chan *heldRequest, 256),
	}
	srv := httptest.NewServer(http.HandlerFunc(g.serve))
	g.URL = srv.URL
	t.Cleanup(func() {
		g.mu.Lock()
		g.parking = map[string]bool{}
		calls := slices.Clone(g.calls)
		g.mu.Unlock()
		for _, c := range calls {
			c.let()
		}
		srv.Close()
	})
	return g
}

func (g *defectGate) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	var fields struct {
		Code string `json:"code"`
	}
	_ = json.Unmarshal(body, &fields)

	g.mu.Lock()
	if fields.Code != "" {
		g.carrying[fields.Code]++
	}
	status := 0
	if q := g.turnAway[r.URL.Path]; len(q) > 0 {
		status, g.turnAway[r.URL.Path] = q[0], q[1:]
	}
	var call *heldRequest
	if status == 0 && g.parking[r.URL.Path] {
		call = &heldRequest{path: r.URL.Path, release: make(chan struct{}), left: make(chan struct{})}
		g.calls = append(g.calls, call)
	}
	g.mu.Unlock()

	if status != 0 {
		w.Header().Set("Retry-After", "0")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"error":"server_error","error_description":"turned away at the gate"}`)
		return
	}
	if call != nil {
		g.arrived <- call
		select {
		case <-call.release:
		case <-r.Context().Done():
			close(call.left)
			return
		}
	}
	if fields.Code != "" {
		g.mu.Lock()
		g.forwarded[fields.Code]++
		g.mu.Unlock()
	}
	rec := &capturingWriter{ResponseWriter: w}
	g.fake.Handler().ServeHTTP(rec, r)
	var answer struct {
		AccessToken string `json:"access_token"`
	}
	if r.URL.Path == connectfake.PathToken && rec.status == http.StatusOK && json.Unmarshal(rec.body.Bytes(), &answer) == nil && answer.AccessToken != "" {
		g.mu.Lock()
		g.minted = append(g.minted, answer.AccessToken)
		g.mu.Unlock()
	}
}

// capturingWriter keeps a copy of the answer it passes on.
type capturingWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (c *capturingWriter) WriteHeader(status int) {
	c.status = status
	c.ResponseWriter.WriteHeader(status)
}

func (c *capturingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	c.body.Write(p)
	return c.ResponseWriter.Write(p)
}

// mintedTokens returns the tokens the fake issued through the gate, in order.
func (g *defectGate) mintedTokens() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.minted)
}

// park holds every later request to path at the gate.
func (g *defectGate) park(path string) {
	g.mu.Lock()
	g.parking[path] = true
	g.mu.Unlock()
}

// open stops parking requests to path and lets the parked ones through.
func (g *defectGate) open(path string) {
	g.mu.Lock()
	delete(g.parking, path)
	calls := slices.Clone(g.calls)
	g.mu.Unlock()
	for _, c := range calls {
		if c.path == path {
			c.let()
		}
	}
}

// refuse answers the next requests to path with statuses, one each, without
// letting them reach the fake.
func (g *defectGate) refuse(path string, statuses ...int) {
	g.mu.Lock()
	g.turnAway[path] = append(g.turnAway[path], statuses...)
	g.mu.Unlock()
}

// next waits for the next request to be parked.
func (g *defectGate) next(t *testing.T, what string) *heldRequest {
	t.Helper()
	select {
	case c := <-g.arrived:
		return c
	case <-time.After(hangGuard):
		t.Fatalf("%s never reached Connect", what)
		return nil
	}
}

// codeCounts returns how many token requests carried code, and how many of
// them reached the fake.
func (g *defectGate) codeCounts(code string) (carrying, forwarded int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.carrying[code], g.forwarded[code]
}

// behindGate points the engine's config at g (same credentials, no verify).
func behindGate(e *testEnv, g *defectGate, extra map[string]any) {
	e.t.Helper()
	data := map[string]any{"base_url": g.URL, "client_secret": testSecret, "verify": false}
	for k, v := range extra {
		data[k] = v
	}
	e.mustOK(logical.UpdateOperation, "config", data)
}

// defectClock replaces e's clock with one the test can move while the
// engine's goroutines read it; it returns the function that moves it.
func defectClock(e *testEnv) func(time.Duration) {
	var offset atomic.Int64
	prev := e.b.now
	e.b.now = func() time.Time { return prev().Add(time.Duration(offset.Load())) }
	return func(d time.Duration) { offset.Add(int64(d)) }
}

// outcome is what a request answered.
type outcome struct {
	resp *logical.Response
	err  error
}

// token is the access token a successful read handed out, "" otherwise.
func (o outcome) token() string {
	if o.err != nil || o.resp == nil || o.resp.IsError() || o.resp.Data == nil {
		return ""
	}
	tok, _ := o.resp.Data["access_token"].(string)
	return tok
}

// goDo sends a request on its own goroutine; its outcome arrives on the channel.
func goDo(e *testEnv, ctx context.Context, op logical.Operation, path string, data map[string]any) <-chan outcome {
	ch := make(chan outcome, 1)
	go func() {
		resp, err := e.doCtx(ctx, op, path, data)
		ch <- outcome{resp, err}
	}()
	return ch
}

// awaitOutcome waits for a request's outcome.
func awaitOutcome(t *testing.T, ch <-chan outcome, what string) outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(hangGuard):
		t.Fatalf("%s never answered", what)
		return outcome{}
	}
}

// unavailableFaults returns 503 (with a Retry-After of 0, so retries do not
// wait) n times: Connect unavailable.
func unavailableFaults(n int) []connectfake.Fault {
	faults := make([]connectfake.Fault, n)
	for i := range faults {
		faults[i] = connectfake.Fault{Status: http.StatusServiceUnavailable, RetryAfter: "0"}
	}
	return faults
}

// queuedFor lists a role's tokens waiting in the revocation queue.
func queuedFor(t *testing.T, s logical.Storage, role string) []string {
	t.Helper()
	return queuedKeys(t, s, role)
}

// storedAccessTokens maps the keys under prefix to the access tokens they hold.
func storedAccessTokens(t *testing.T, s logical.Storage, prefix string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range storageKeysUnder(t, s, prefix) {
		entry, err := s.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		if entry == nil {
			continue
		}
		var v struct {
			AccessToken string `json:"access_token"`
		}
		if err := json.Unmarshal(entry.Value, &v); err != nil {
			t.Fatal(err)
		}
		out[k] = v.AccessToken
	}
	return out
}

// liveTokens returns those of tokens Connect still accepts.
func liveTokens(f *connectfake.Server, tokens ...string) []string {
	var out []string
	for _, tok := range tokens {
		if tok != "" && f.TokenLive(tok) {
			out = append(out, tok)
		}
	}
	return out
}

// periodicPass runs the engine's periodic function as Vault's rollback timer does.
func periodicPass(t *testing.T, e *testEnv) {
	t.Helper()
	if err := e.b.periodic(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage}); err != nil {
		t.Fatalf("periodic: %v", err)
	}
}

// 1. An authorization code is judged by the fate of the last attempt that
// carried it: a 503 that turned the first attempt away says nothing about a
// second attempt Connect processed and never answered in time.
func TestDefect1CodeJudgedByLastAttempt(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := newDefectGate(t, e.fake)
	behindGate(e, g, map[string]any{"request_timeout": "1s", "max_retries": 1})
	code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")

	// Attempt 1 is turned away (503) before reaching Connect's handler;
	// attempt 2 is processed (the code is spent, a token minted) and its
	// answer never arrives within the per-attempt timeout.
	g.refuse(connectfake.PathToken, http.StatusServiceUnavailable)
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{AfterHandling: true, Hang: true})

	_, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	if status := codedStatus(err); status < 500 || status > 599 {
		t.Fatalf("first write: err = %v (status %d), want a 5xx", err, status)
	}
	if !strings.Contains(err.Error(), "new code") {
		t.Errorf("the error does not tell the caller to get a new code: %v", err)
	}
	carrying, processed := g.codeCounts(code)
	if carrying != 2 || processed != 1 {
		t.Fatalf("token requests carrying the code: %d (%d reached Connect), want 2 (1): one turned away, one processed", carrying, processed)
	}

	// The Vault client retries a 5xx by itself: the same code again.
	resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	expectError(t, resp, err, "already sent")
	if c, p := g.codeCounts(code); c != carrying || p != processed {
		t.Errorf("the retry sent the code again: %d requests carried it (%d reached Connect)", c, p)
	}
	if got := e.fake.Mints(); got != 1 {
		t.Errorf("Connect minted %d tokens for the code, want 1", got)
	}
}

// 2. The fallback (serve the token the role still serves while Connect
// fails) never hands out a token a flush took out of service meanwhile.
func TestDefect2FallbackNeverServesFlushedToken(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := newDefectGate(t, e.fake)
	behindGate(e, g, nil)
	advance := defectClock(e)
	old := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	advance(23*time.Hour + 30*time.Minute) // past min_remaining_ttl: a refresh is due, the token valid

	g.park(connectfake.PathToken)
	read := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
	parked := g.next(t, "the refresh")

	e.mustOK(logical.DeleteOperation, "cache/cc", nil) // completes while the mint is parked
	if e.fake.TokenLive(old) {
		t.Fatal("the flush did not revoke the token")
	}

	e.fake.InjectFaults(connectfake.PathToken, unavailableFaults(3)...) // the parked mint and its retries
	g.open(connectfake.PathToken)
	parked.let()
	o := awaitOutcome(t, read, "the read")
	if tok := o.token(); tok == old {
		t.Fatal("the read handed out the flushed token")
	}
	if got := codedStatus(o.err); got != http.StatusBadGateway {
		t.Errorf("read: resp = %v, err = %v; want a coded 502", o.resp, o.err)
	}
}

// 3. A mint with credentials rotated away while it was in flight never
// replaces the token minted with the new ones, and never leaves its own
// token live where nothing can reach it.
func TestDefect3LateOldCredentialsMintIsNotPublished(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := newDefectGate(t, e.fake)
	behindGate(e, g, nil)

	g.park(connectfake.PathToken)
	late := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
	g.next(t, "the mint with the old credentials")

	const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
	e.fake.AddClient(newID, newSecret)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": newID, "client_secret": newSecret, "verify": false})

	fresh := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
	g.next(t, "the mint with the new credentials").let()
	o := awaitOutcome(t, fresh, "the read with the new credentials")
	n := o.token()
	if n == "" {
		t.Fatalf("read with the new credentials: resp = %v, err = %v", o.resp, o.err)
	}
	if info, _ := e.fake.Token(n); info.ClientID != newID {
		t.Fatalf("token N was minted by %q, want the new credentials", info.ClientID)
	}

	g.open(connectfake.PathToken) // lets the old credentials' mint through, and whatever follows
	lo := awaitOutcome(t, late, "the late read")
	minted := g.mintedTokens()
	if len(minted) != 2 {
		t.Fatalf("Connect issued %d tokens through the gate, want 2", len(minted))
	}
	lateTok := minted[0]
	if minted[0] == n {
		lateTok = minted[1]
	}

	key := tokenKey("cc", "")
	if got := storedAccessTokens(t, e.storage, roleTokenPrefix("cc"))[key]; got != n {
		t.Errorf("%s no longer holds token N: the late mint replaced it (holds the late token: %v)", key, got == lateTok)
	}
	// The late reader gets a 409 (read again), or a token; a token it did
	// not get must not be left live (the flush below checks that one it got
	// stays reachable).
	if lo.token() == "" {
		if codedStatus(lo.err) != http.StatusConflict {
			t.Errorf("late read: resp = %v, err = %v; want a 409 or a token", lo.resp, lo.err)
		}
		if e.fake.TokenLive(lateTok) {
			t.Error("the late token was handed to nobody and is live at Connect")
		}
	}
	if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got != n {
		t.Error("a later read is not served token N")
	}

	e.mustOK(logical.DeleteOperation, "cache/cc", nil)
	if l := liveTokens(e.fake, n, lateTok); len(l) != 0 {
		t.Errorf("after a flush %d of the role's tokens are still live (N live: %v, late live: %v)", len(l), e.fake.TokenLive(n), e.fake.TokenLive(lateTok))
	}
}

// 4. A cached token that expires while its refresh is in flight, and the
// refresh then fails, is answered with a coded 502/504: never an expired
// token, never a 500 or an uncoded error.
func TestDefect4ExpiryDuringFailingRefresh(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := newDefectGate(t, e.fake)
	behindGate(e, g, nil)
	advance := defectClock(e)
	old := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	advance(23*time.Hour + 30*time.Minute)

	g.park(connectfake.PathToken)
	read := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
	parked := g.next(t, "the refresh")
	advance(time.Hour) // the cached token expires while its refresh is parked

	e.fake.InjectFaults(connectfake.PathToken, unavailableFaults(3)...)
	g.open(connectfake.PathToken)
	parked.let()
	o := awaitOutcome(t, read, "the read")
	if o.token() == old {
		t.Fatal("an expired token was handed out")
	}
	if got := codedStatus(o.err); got != http.StatusBadGateway && got != http.StatusGatewayTimeout {
		t.Errorf("read: resp = %v, err = %v (status %d); want a coded 502 or 504", o.resp, o.err, got)
	}
}

// 5. A token nobody will hold that cannot be revoked at once (Connect's
// revoke endpoint failing) is queued, not dropped, and the periodic function
// revokes it once Connect recovers.
func TestDefect5CleanupRevocationsAreRetried(t *testing.T) {
	for _, tc := range []struct {
		name, role string
		run        func(t *testing.T, e *testEnv, g *defectGate, s *gatedStorage)
	}{
		{"abandoned exclusive mint", "cc-excl", func(t *testing.T, e *testEnv, g *defectGate, s *gatedStorage) {
			walDone := s.park("delete", "wal/*") // the abandoned mint's last step
			g.park(connectfake.PathToken)
			ctx, cancel := context.WithCancel(context.Background())
			read := goDo(e, ctx, logical.ReadOperation, "creds/cc-excl", nil)
			parked := g.next(t, "the exclusive mint")
			cancel() // the caller leaves while the mint is in flight
			if o := awaitOutcome(t, read, "the abandoned read"); o.token() != "" {
				t.Fatal("the abandoned read got a token")
			}
			parked.let() // Connect answers after all
			select {
			case <-walDone.reached:
			case <-time.After(hangGuard):
				t.Error("the abandoned mint's clean-up never finished: its write-ahead log entry was never dropped")
			}
			close(walDone.release)
		}},
		{"unusable answer naming a token", "cc", func(t *testing.T, e *testEnv, g *defectGate, s *gatedStorage) {
			e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{AfterHandling: true, Status: http.StatusOK,
				Body: `{"access_token":"` + connectfake.PlaceholderAccessToken + `","token_type":"Bearer","expires_in":"soon"}`})
			o := outcomeOf(e.do(logical.ReadOperation, "creds/cc", nil))
			if o.token() != "" || o.err == nil && (o.resp == nil || !o.resp.IsError()) {
				t.Fatalf("an unusable answer was not an error: resp = %v, err = %v", o.resp, o.err)
			}
		}},
		{"shared token of a role changed while minting", "cc", func(t *testing.T, e *testEnv, g *defectGate, s *gatedStorage) {
			g.park(connectfake.PathToken)
			read := goDo(e, context.Background(), logical.ReadOperation, "creds/cc", nil)
			parked := g.next(t, "the shared mint")
			e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"scopes": "connect:fulfillment,connect:ian"})
			parked.let()
			if o := awaitOutcome(t, read, "the read"); o.token() != "" {
				t.Fatal("a token minted for the previous definition of the role was handed out")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			g := newDefectGate(t, e.fake)
			behindGate(e, g, nil)
			s := gateStorage(e)
			e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(20)...)

			tc.run(t, e, g, s)

			minted := g.mintedTokens()
			if len(minted) != 1 {
				t.Fatalf("Connect issued %d tokens, want 1", len(minted))
			}
			tok := minted[0]
			if !e.fake.TokenLive(tok) {
				t.Fatal("the token was revoked although Connect's revoke endpoint failed")
			}
			queued := storedAccessTokens(t, e.storage, revokingStoragePrefix+tc.role+"/")
			if len(queued) != 1 || !slices.Contains(slices.Collect(maps.Values(queued)), tok) {
				t.Fatalf("revoking/%s/ holds %d tokens (the one minted: %v), want it queued", tc.role, len(queued), slices.Contains(slices.Collect(maps.Values(queued)), tok))
			}

			e.fake.ClearFaults() // Connect recovers
			periodicPass(t, e)
			if e.fake.TokenLive(tok) {
				t.Error("the queued token is live after the periodic retry")
			}
			if n := len(queuedFor(t, e.storage, tc.role)); n != 0 {
				t.Errorf("%d tokens left in the queue after the retry revoked them", n)
			}
		})
	}
}

// 6. A deleted role's tokens, tokens minted for an earlier definition of a
// role and tokens replaced while still valid all stay reachable by a flush.
func TestDefect6DeletedOrEditedRoleTokensCanBeRevoked(t *testing.T) {
	t.Run("role deleted", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		role := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		u1 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}).Data["access_token"].(string)
		u2 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-2"}).Data["access_token"].(string)
		e.mustOK(logical.DeleteOperation, "roles/cc", nil)
		e.mustOK(logical.DeleteOperation, "roles/shoppers", nil)
		if l := liveTokens(e.fake, role, u1, u2); len(l) != 3 {
			t.Fatalf("a role delete revoked %d tokens; leases still hold them", 3-len(l))
		}
		e.mustOK(logical.DeleteOperation, "cache/cc", nil)
		e.mustOK(logical.DeleteOperation, "cache/shoppers", nil)
		if e.fake.TokenLive(role) {
			t.Error("the deleted role's shared token is live after a flush")
		}
		if l := liveTokens(e.fake, u1, u2); len(l) != 0 {
			t.Errorf("%d of the deleted role's per-user tokens are live after a flush", len(l))
		}
	})

	t.Run("role edited", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		old := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"scopes": "connect:fulfillment,connect:ian"})
		next := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		if next == old {
			t.Fatal("the token minted for the previous definition was served after the edit")
		}
		stored := storedAccessTokens(t, e.storage, roleTokenPrefix("cc"))
		if !slices.Contains(slices.Collect(maps.Values(stored)), old) {
			t.Errorf("the previous definition's token is no longer stored under %s (keys %v): no flush can reach it", roleTokenPrefix("cc"), slices.Sorted(maps.Keys(stored)))
		}
		e.mustOK(logical.DeleteOperation, "cache/cc", nil)
		if e.fake.TokenLive(old) {
			t.Error("the token minted for the previous definition is live after a flush")
		}
		if e.fake.TokenLive(next) {
			t.Error("the token minted for the new definition is live after a flush")
		}
	})

	t.Run("token replaced at refresh", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		advance := defectClock(e)
		first := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		advance(23*time.Hour + 30*time.Minute)
		second := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		if second == first || !e.fake.TokenLive(first) {
			t.Fatalf("the refresh did not replace a still-valid token (replaced: %v)", second != first)
		}
		e.mustOK(logical.DeleteOperation, "cache/cc", nil)
		if e.fake.TokenLive(first) {
			t.Error("the token replaced at refresh is live after a flush")
		}
		if e.fake.TokenLive(second) {
			t.Error("the current token is live after a flush")
		}
	})
}

// 7. One role's revocation stuck at a host that does not answer holds up
// no other role's revocations in the same periodic pass.
func TestDefect7OneStuckHostDoesNotBlockOtherRoles(t *testing.T) {
	e := newTestEnv(t)
	x := newDefectGate(t, e.fake) // host X: the fake behind a gate
	e.mustOK(logical.UpdateOperation, "config", map[string]any{
		"client_id": testClientID, "client_secret": testSecret, "base_url": x.URL, "verify": false, "max_retries": 0,
		"request_timeout": "60s", // X never answers: no attempt ends before the test lets it
	})
	for _, name := range []string{"aaa", "bbb"} {
		e.mustOK(logical.UpdateOperation, "roles/"+name, map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment", "token_reuse": "exclusive"})
	}
	leaseA := e.mustOK(logical.ReadOperation, "creds/aaa", nil)
	tokA := leaseA.Data["access_token"].(string)

	y := connectfake.New() // host Y, with its own application
	t.Cleanup(y.Close)
	const yID, ySecret = "test-client-y", "fake-y-secret-for-tests-24680"
	y.AddClient(yID, ySecret)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": yID, "client_secret": ySecret, "base_url": y.URL, "verify": false})
	leaseB := e.mustOK(logical.ReadOperation, "creds/bbb", nil)
	tokB := leaseB.Data["access_token"].(string)
	if !y.TokenLive(tokB) || !e.fake.TokenLive(tokA) {
		t.Fatal("the tokens were not minted at their hosts")
	}

	// Both hosts fail the lease revocations: both tokens are queued.
	e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(1)...)
	y.InjectFaults(connectfake.PathRevoke, unavailableFaults(1)...)
	for _, lease := range []*logical.Secret{leaseA.Secret, leaseB.Secret} {
		if err := revoke(e, lease); err != nil {
			t.Fatalf("lease revocation with Connect down: %v", err)
		}
	}
	if a, b := len(queuedFor(t, e.storage, "aaa")), len(queuedFor(t, e.storage, "bbb")); a != 1 || b != 1 {
		t.Fatalf("queued revocations: aaa %d, bbb %d; want 1 each", a, b)
	}

	// Y recovers; X accepts the revocation and never answers.
	e.fake.ClearFaults()
	y.ClearFaults()
	x.park(connectfake.PathRevoke)
	pass := make(chan error, 1)
	go func() {
		pass <- e.b.periodic(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage})
	}()
	stuck := x.next(t, "role aaa's revocation")
	if !waitUntil(func() bool { return !y.TokenLive(tokB) }) {
		t.Error("role bbb's token was not revoked while role aaa's revocation was stuck at host X")
	}
	if !e.fake.TokenLive(tokA) {
		t.Fatal("role aaa's token was revoked although host X never answered")
	}
	x.open(connectfake.PathRevoke)
	stuck.let()
	select {
	case err := <-pass:
		if err != nil {
			t.Errorf("periodic: %v", err)
		}
	case <-time.After(hangGuard):
		t.Fatal("the periodic pass never ended")
	}
	if e.fake.TokenLive(tokA) {
		t.Error("role aaa's token is live once host X answered")
	}
	if a, b := len(queuedFor(t, e.storage, "aaa")), len(queuedFor(t, e.storage, "bbb")); a != 0 || b != 0 {
		t.Errorf("queued revocations left: aaa %d, bbb %d", a, b)
	}
}

// 8. A shared token that is due for refresh but still valid is served, with
// a warning, when no mint slot comes free in time; and a 429 from the token
// endpoint never holds back a revocation.
func TestDefect8StillValidTokenServedWhenNoSlot(t *testing.T) {
	t.Run("no mint slot", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		g := newDefectGate(t, e.fake)
		behindGate(e, g, map[string]any{"max_concurrent_mints": 1})
		advance := defectClock(e)
		tokB := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
		advance(23*time.Hour + 30*time.Minute) // due for refresh, 30 minutes left

		g.park(connectfake.PathToken)
		readA := goDo(e, context.Background(), logical.ReadOperation, "creds/cc-excl", nil)
		slotHolder := g.next(t, "role cc-excl's mint")

		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second) // the caller's deadline
		defer cancel()
		o := outcomeOf(e.doCtx(ctx, logical.ReadOperation, "creds/cc", nil))
		if got := o.token(); got != tokB {
			t.Errorf("read of cc while the only slot is taken: err = %v (status %d), served the still-valid token: %v; want it, with a warning", o.err, codedStatus(o.err), got == tokB)
		} else if len(o.resp.Warnings) == 0 {
			t.Error("the still-valid token was served without a warning")
		}

		g.open(connectfake.PathToken)
		slotHolder.let()
		if a := awaitOutcome(t, readA, "role cc-excl's read"); a.token() == "" {
			t.Errorf("role cc-excl's read: %v %v", a.resp, a.err)
		}
	})

	t.Run("429 does not hold back a revocation", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		lease := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
		tok := lease.Data["access_token"].(string)
		e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 0})

		// The token endpoint asks for a pause longer than the caller's deadline.
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: http.StatusTooManyRequests, RetryAfter: "25"})
		if o := outcomeOf(e.do(logical.ReadOperation, "creds/cc-excl", nil)); o.token() != "" {
			t.Fatal("a 429 produced a token")
		}
		before := e.fake.Requests(connectfake.PathRevoke)

		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second) // Vault's deadline for the revocation
		defer cancel()
		if _, err := e.b.HandleRequest(ctx, &logical.Request{Operation: logical.RevokeOperation, Secret: lease.Secret, Storage: e.storage}); err != nil {
			t.Fatalf("lease revocation: %v", err)
		}
		if got := e.fake.Requests(connectfake.PathRevoke) - before; got != 1 {
			t.Errorf("the lease revocation sent %d revoke requests while the token endpoint's pause was on, want 1", got)
		}
		if e.fake.TokenLive(tok) {
			t.Error("the lease's token is live after its revocation")
		}
	})
}

// 9. An authorization code is released for another try only when Connect
// provably did not process it.
func TestDefect9CodeReleasedOnlyWhenUnprocessed(t *testing.T) {
	for _, tc := range []struct {
		name string
		// fail makes the first write fail; restore undoes what it set up.
		fail, restore func(e *testEnv)
		released      bool
	}{
		{"400 invalid_grant: spent", func(e *testEnv) {
			e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: http.StatusBadRequest,
				Body: `{"error":"invalid_grant","error_description":"The provided authorization grant is invalid."}`})
		}, func(*testEnv) {}, false},
		{"429 and no retry left: released", func(e *testEnv) {
			e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: http.StatusTooManyRequests, RetryAfter: "0"})
		}, func(*testEnv) {}, true},
		{"connection refused: released", func(e *testEnv) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				e.t.Fatal(err)
			}
			closed := "http://" + ln.Addr().String()
			ln.Close()
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": closed, "client_secret": testSecret, "verify": false})
		}, func(e *testEnv) {
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": e.fake.URL, "client_secret": testSecret, "verify": false})
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
			code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
			tc.fail(e)
			if o := outcomeOf(e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})); o.token() != "" {
				t.Fatal("the failing write produced a token")
			}
			tc.restore(e)
			before := e.fake.Requests(connectfake.PathToken)

			resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
			sent := e.fake.Requests(connectfake.PathToken) - before
			if !tc.released {
				expectError(t, resp, err, "already sent")
				if sent != 0 {
					t.Errorf("a spent code was sent again (%d requests)", sent)
				}
				return
			}
			if sent != 1 {
				t.Errorf("the retry sent %d token requests, want 1: the code was never processed", sent)
			}
			if err != nil || resp == nil || resp.IsError() {
				t.Errorf("a retry with a code Connect never processed failed: %v %v", resp, err)
			}
		})
	}
}

// 10. Warnings and errors name a user's token only by a hash of the user
// id: Vault's audit log does not HMAC them.
func TestUserIDsNeverInWarningsOrErrors(t *testing.T) {
	const marker = "qv9z"
	users := []string{"store-" + marker + "-1", "store-" + marker + "-2"}
	hashed := regexp.MustCompile(`#[0-9a-f]{6,}`)
	check := func(t *testing.T, what, msg string) {
		t.Helper()
		if strings.Contains(msg, marker) {
			t.Errorf("%s holds a user id: %q", what, msg)
		}
		if !hashed.MatchString(msg) {
			t.Errorf("%s does not name the users' tokens as #<hash>: %q", what, msg)
		}
	}
	e := newTestEnv(t)
	setupRoles(e)
	read := func() {
		for _, u := range users {
			e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": u})
		}
	}

	t.Run("revocation refused", func(t *testing.T) {
		e.t = t
		defer func() { e.t = t }()
		read()
		refusal := connectfake.Fault{Status: http.StatusForbidden, Body: `{"error":"unauthorized_client","error_description":"refused"}`}
		e.fake.InjectFaults(connectfake.PathRevoke, refusal, refusal)
		resp, err := e.do(logical.DeleteOperation, "cache/shoppers", nil)
		if err != nil || resp == nil || len(resp.Warnings) == 0 {
			t.Fatalf("flush with revocations refused: resp = %v, err = %v; want warnings", resp, err)
		}
		check(t, "the warning", strings.Join(resp.Warnings, "\n"))
		e.fake.ClearFaults()
	})

	t.Run("revocation unavailable", func(t *testing.T) {
		e.t = t
		read()
		e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(20)...)
		_, err := e.do(logical.DeleteOperation, "cache/shoppers", nil)
		if codedStatus(err) != http.StatusBadGateway {
			t.Fatalf("flush with Connect unavailable: err = %v; want a coded 502", err)
		}
		check(t, "the error", err.Error())
		e.fake.ClearFaults()
	})
	e.t = t
}

// 11. Cleaning up the mount ends the work that outlives requests (a shared
// flight, a detached exclusive mint) before it returns: nothing touches
// storage afterwards.
func TestCleanupEndsDetachedWork(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := newDefectGate(t, e.fake)
	behindGate(e, g, nil)
	rec := &afterFlagStorage{Storage: e.storage}
	e.storage = rec
	s := gateStorage(e)
	advance := defectClock(e)
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	advance(23*time.Hour + 30*time.Minute) // a refresh is due

	g.park(connectfake.PathToken)
	// A shared flight whose reader leaves: the flight goes on.
	ctx1, cancel1 := context.WithCancel(context.Background())
	shared := goDo(e, ctx1, logical.ReadOperation, "creds/cc", nil)
	sharedMint := g.next(t, "the shared flight's mint")
	cancel1()
	awaitOutcome(t, shared, "the shared read")
	// An exclusive mint whose reader leaves: the mint goes on, detached.
	ctx2, cancel2 := context.WithCancel(context.Background())
	excl := goDo(e, ctx2, logical.ReadOperation, "creds/cc-excl", nil)
	exclMint := g.next(t, "the exclusive mint")
	cancel2()
	awaitOutcome(t, excl, "the exclusive read")

	// What each does once its mint ends: the flight re-reads the role's
	// token for its fallback; the exclusive mint drops its WAL entry.
	flightEnd := s.park("get", tokenKey("cc", ""))
	exclEnd := s.park("delete", "wal/*")

	cleaned := make(chan struct{})
	go func() {
		e.b.Cleanup(context.Background())
		rec.after.Store(true)
		close(cleaned)
	}()
	for _, p := range []struct {
		gt   *gate
		what string
	}{{flightEnd, "the shared flight"}, {exclEnd, "the detached exclusive mint"}} {
		select {
		case <-p.gt.reached:
		case <-time.After(hangGuard):
			t.Fatalf("%s did not end when the mount was cleaned up", p.what)
		}
	}
	select {
	case <-cleaned:
		t.Error("Cleanup returned while detached work was still running")
	default:
	}
	close(flightEnd.release)
	close(exclEnd.release)
	select {
	case <-cleaned:
	case <-time.After(hangGuard):
		t.Fatal("Cleanup never returned")
	}
	for _, c := range []*heldRequest{sharedMint, exclMint} {
		select {
		case <-c.left:
		case <-time.After(hangGuard):
			t.Errorf("a mint parked at Connect (%s) was not abandoned by Cleanup", c.path)
		}
	}
	g.open(connectfake.PathToken)
	if calls := rec.calls(); len(calls) != 0 {
		t.Errorf("storage calls after Cleanup returned: %v", calls)
	}
}

// afterFlagStorage records the storage calls made once after is set.
type afterFlagStorage struct {
	logical.Storage
	after atomic.Bool
	mu    sync.Mutex
	late  []string
}

func (a *afterFlagStorage) note(op, key string) {
	if a.after.Load() {
		a.mu.Lock()
		a.late = append(a.late, op+" "+key)
		a.mu.Unlock()
	}
}

func (a *afterFlagStorage) calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.late)
}

func (a *afterFlagStorage) List(ctx context.Context, prefix string) ([]string, error) {
	a.note("list", prefix)
	return a.Storage.List(ctx, prefix)
}

func (a *afterFlagStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	a.note("get", key)
	return a.Storage.Get(ctx, key)
}

func (a *afterFlagStorage) Put(ctx context.Context, entry *logical.StorageEntry) error {
	a.note("put", entry.Key)
	return a.Storage.Put(ctx, entry)
}

func (a *afterFlagStorage) Delete(ctx context.Context, key string) error {
	a.note("delete", key)
	return a.Storage.Delete(ctx, key)
}

// 12. The write-ahead log is the node's own unfinished work: local storage,
// not replicated.
func TestWALIsLocalStorage(t *testing.T) {
	e := newTestEnv(t)
	if local := e.b.SpecialPaths().LocalStorage; !slices.Contains(local, "wal/") {
		t.Errorf("LocalStorage = %v, want it to hold wal/", local)
	}
}

func outcomeOf(resp *logical.Response, err error) outcome { return outcome{resp, err} }

// One role's queued tokens at a healthy host Y must not wait on the same
// role's token at a host X that never answers. revokeQueued tries a role's
// tokens per host, side by side: X's attempt (request_timeout × (1+max_retries):
// 40 s with the defaults) outlasts the role's turn (revokeRetryTimeout, 30 s);
// tried in key order, every pass would end inside it and Y's tokens sorting
// after it would never be tried. Here the pass's budget is a 3 s deadline.
func TestStuckHostDoesNotStarveItsRoleQueue(t *testing.T) {
	e := newTestEnv(t)
	x := newDefectGate(t, e.fake)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": testClientID, "client_secret": testSecret,
		"base_url": x.URL, "verify": false, "max_retries": 0, "request_timeout": "60s"})
	e.mustOK(logical.UpdateOperation, "roles/shoppers", map[string]any{"grant_type": "fulfillment_user_assertion",
		"scopes": "connect:recommendations", "allowed_user_ids": "store-*"})
	atX := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-x"}).Data["access_token"].(string)

	y := connectfake.New()
	t.Cleanup(y.Close)
	y.AddClient("test-client-y", "fake-y-secret-for-tests-24680")
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": "test-client-y",
		"client_secret": "fake-y-secret-for-tests-24680", "base_url": y.URL, "verify": false})
	var after []string // tokens at Y queued after X's
	for i := 0; len(after) < 3 && i < 64; i++ {
		tok := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": fmt.Sprintf("store-y%d", i)}).Data["access_token"].(string)
		if pendingKey("shoppers", tok) > pendingKey("shoppers", atX) {
			after = append(after, tok)
		}
	}

	e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(1)...)
	y.InjectFaults(connectfake.PathRevoke, unavailableFaults(1)...)
	if _, err := e.do(logical.DeleteOperation, "cache/shoppers", nil); codedStatus(err) != 502 {
		t.Fatalf("flush with both hosts down: %v", err)
	}
	e.fake.ClearFaults()
	y.ClearFaults()

	x.park(connectfake.PathRevoke) // Y is back; X never answers
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = e.b.periodic(ctx, &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage})
	x.open(connectfake.PathRevoke)
	if l := liveTokens(y, after...); len(l) != 0 {
		t.Errorf("%d of %d tokens at healthy host Y still live after the pass (queue: %d entries)", len(l), len(after), len(queuedFor(t, e.storage, "shoppers")))
	}
}

// A lease revocation whose try at Connect runs out the request's deadline
// (Connect accepts and never answers) must still leave the token queued: it
// is queued before it is tried (queued after, with the same expired context,
// the queue write failed and nothing was queued).
func TestLeaseRevocationIsQueuedBeforeItIsTried(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 0, "request_timeout": "60s"})
	lease := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := lease.Data["access_token"].(string)
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Hang: true})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // Vault's deadline for the revocation
	defer cancel()
	_, err := e.b.HandleRequest(ctx, &logical.Request{Operation: logical.RevokeOperation, Secret: lease.Secret, Storage: e.storage})
	if n := len(queuedFor(t, e.storage, "cc-excl")); n != 1 || !e.fake.TokenLive(tok) {
		t.Errorf("revocation err = %v; queued %d, want the live token queued", err, n)
	}
}
