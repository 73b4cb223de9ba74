package instacart

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// What the lifecycle tests (beside the code each checks) use to drive the
// engine through requests as Vault sends them and force an interleaving with
// channels: Connect requests parked at a gate in front of the fake
// (connectGate), storage calls parked by gatedStorage. Bounded waits only
// guard against a hung test.

// hangGuard bounds every wait for something the test has made certain to
// happen; reaching it means the engine never did it.
const hangGuard = 10 * time.Second

// connectGate is a Connect host in front of a fake. Requests to a parked path
// wait until the test lets them through one by one (or opens the path);
// requests to a path it turns away get an error status without reaching the
// fake. It counts, per authorization code, the token requests carrying it and
// those that reached the fake.
type connectGate struct {
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

func newConnectGate(t *testing.T, fake *connectfake.Server) *connectGate {
	t.Helper()
	g := &connectGate{
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

func (g *connectGate) serve(w http.ResponseWriter, r *http.Request) {
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
func (g *connectGate) mintedTokens() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.minted)
}

// park holds every later request to path at the gate.
func (g *connectGate) park(path string) {
	g.mu.Lock()
	g.parking[path] = true
	g.mu.Unlock()
}

// open stops parking requests to path and lets the parked ones through.
func (g *connectGate) open(path string) {
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
func (g *connectGate) refuse(path string, statuses ...int) {
	g.mu.Lock()
	g.turnAway[path] = append(g.turnAway[path], statuses...)
	g.mu.Unlock()
}

// next waits for the next request to be parked.
func (g *connectGate) next(t *testing.T, what string) *heldRequest {
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
func (g *connectGate) codeCounts(code string) (carrying, forwarded int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.carrying[code], g.forwarded[code]
}

// behindGate points the engine's config at g (same credentials, no verify).
func behindGate(e *testEnv, g *connectGate, extra map[string]any) {
	e.t.Helper()
	data := map[string]any{"base_url": g.URL, "client_secret": testSecret, "verify": false}
	for k, v := range extra {
		data[k] = v
	}
	e.mustOK(logical.UpdateOperation, "config", data)
}

// movableClock replaces e's clock with one the test can move while the
// engine's goroutines read it; it returns the function that moves it.
func movableClock(e *testEnv) func(time.Duration) {
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

func outcomeOf(resp *logical.Response, err error) outcome { return outcome{resp, err} }
