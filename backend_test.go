package instacart

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

const (
	testClientID = "test-client"
	// testSecret is a throwaway value for the in-process fake; tests assert
	// it never appears in a response, an error or a log line.
	testSecret = "fake-secret-for-tests-0123456789"
)

// testEnv is a backend on in-memory storage talking to an in-process Connect fake.
type testEnv struct {
	t       testing.TB
	b       *backend
	storage logical.Storage
	fake    *connectfake.Server
	sys     *logical.StaticSystemView

	mu   sync.Mutex
	seen []string // serialized responses and errors, checked for secrets at cleanup
	logs *syncBuffer
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	fake := connectfake.New()
	t.Cleanup(fake.Close)
	fake.AddClient(testClientID, testSecret)

	logs := &syncBuffer{}
	sys := logical.TestSystemView()
	conf := logical.TestBackendConfig()
	conf.StorageView = &logical.InmemStorage{}
	conf.System = sys
	conf.Logger = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Trace})
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		t.Fatalf("Factory: %v", err)
	}
	lb.(*backend).hooks = &testHooks{}
	// As Vault does when it mounts the engine.
	if err := lb.Initialize(context.Background(), &logical.InitializationRequest{Storage: conf.StorageView}); err != nil {
		t.Fatalf("Initialize: %v", err)
	}
	e := &testEnv{t: t, b: lb.(*backend), storage: conf.StorageView, fake: fake, sys: sys, logs: logs}
	t.Cleanup(func() { e.assertNoSecretLeaks(t) })
	return e
}

// assertNoSecretLeaks checks everything the backend said for the client secret.
func (e *testEnv) assertNoSecretLeaks(t testing.TB) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range append(e.seen, e.logs.String()) {
		if strings.Contains(s, testSecret) {
			t.Errorf("client_secret leaked into a response, error or log line")
			return
		}
	}
}

// do sends a request to the backend as Vault would.
func (e *testEnv) do(op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	e.t.Helper()
	return e.doCtx(context.Background(), op, path, data)
}

func (e *testEnv) doCtx(ctx context.Context, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	req := &logical.Request{Operation: op, Path: path, Data: data, Storage: e.storage}
	if op == logical.CreateOperation || op == logical.UpdateOperation {
		// Vault picks create or update with the path's existence check.
		if ok, exists, err := e.b.HandleExistenceCheck(ctx, req); err == nil && ok {
			req.Operation = logical.UpdateOperation
			if !exists {
				req.Operation = logical.CreateOperation
			}
		}
	}
	resp, err := e.b.HandleRequest(ctx, req)
	e.record(resp, err)
	return resp, err
}

func (e *testEnv) record(resp *logical.Response, err error) {
	b, _ := json.Marshal(resp)
	s := string(b)
	if err != nil {
		s += err.Error()
	}
	e.mu.Lock()
	e.seen = append(e.seen, s)
	e.mu.Unlock()
}

// mustOK fails the test unless the request succeeded without an error response.
func (e *testEnv) mustOK(op logical.Operation, path string, data map[string]any) *logical.Response {
	e.t.Helper()
	resp, err := e.do(op, path, data)
	if err != nil || resp.IsError() {
		e.t.Fatalf("%s %s: err=%v resp=%v", op, path, err, resp)
	}
	return resp
}

func (e *testEnv) configure() {
	e.t.Helper()
	e.mustOK(logical.UpdateOperation, "config", map[string]any{
		"client_id":     testClientID,
		"client_secret": testSecret,
		"base_url":      e.fake.URL,
		"max_retries":   2,
	})
}

// storageSnapshot returns every storage key and value.
func (e *testEnv) storageSnapshot() map[string]string {
	e.t.Helper()
	out := map[string]string{}
	var walk func(prefix string)
	walk = func(prefix string) {
		keys, err := e.storage.List(context.Background(), prefix)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, k := range keys {
			if strings.HasSuffix(k, "/") {
				walk(prefix + k)
				continue
			}
			entry, err := e.storage.Get(context.Background(), prefix+k)
			if err != nil {
				e.t.Fatal(err)
			}
			out[prefix+k] = string(entry.Value)
		}
	}
	walk("")
	return out
}

// usersStatus calls Connect's POST /v2/fulfillment/users with token, which only
// live tokens may do, and returns the HTTP status.
func usersStatus(t testing.TB, baseURL, token string) int {
	t.Helper()
	body := strings.NewReader(`{"user_id":"johnsmith6000","first_name":"john","last_name":"smith","phone_number":"800-555-0100"}`)
	req, err := http.NewRequest(http.MethodPost, baseURL+connectfake.PathUsers, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// expectError asserts a 400-style error response whose message names field.
func expectError(t testing.TB, resp *logical.Response, err error, field string) {
	t.Helper()
	if err != nil {
		t.Fatalf("want an error response naming %q, got error %v", field, err)
	}
	if resp == nil || !resp.IsError() {
		t.Fatalf("want an error response naming %q, got %v", field, resp)
	}
	if msg := resp.Error().Error(); !namesWord(msg, field) {
		t.Errorf("error %q does not name %q", msg, field)
	}
}

// advance moves the backend's clock forward.
func (e *testEnv) advance(d time.Duration) {
	prev := e.b.now
	e.b.now = func() time.Time { return prev().Add(d) }
}

// namesWord reports whether msg holds word as a word of its own: "ttl" is
// not named by "min_remaining_ttl", nor "name" by "hostname".
func namesWord(msg, word string) bool {
	re := regexp.MustCompile(`(^|[^A-Za-z0-9_])` + regexp.QuoteMeta(word) + `([^A-Za-z0-9_]|$)`)
	return re.MatchString(msg)
}

// codedStatus returns the HTTP status a coded error carries (0 if none).
func codedStatus(err error) int {
	var coded logical.HTTPCodedError
	if errors.As(err, &coded) {
		return coded.Code()
	}
	return 0
}

func TestTokensAreSealWrapped(t *testing.T) {
	e := newTestEnv(t)
	wrapped := e.b.PathsSpecial.SealWrapStorage
	for _, want := range []string{configStoragePath, tokenStoragePrefix, userTokenStoragePrefix, revokingStoragePrefix, "wal/"} {
		found := false
		for _, p := range wrapped {
			found = found || p == want
		}
		if !found {
			t.Errorf("%q is not seal-wrapped (%v)", want, wrapped)
		}
	}
}

// gatedConnect puts a gate in front of the fake: each token request waits
// until the test releases it, then is served by the fake as usual.
func gatedConnect(t *testing.T, fake *connectfake.Server) (url string, arrived <-chan struct{}, release chan<- struct{}) {
	t.Helper()
	in := make(chan struct{}, 16)
	out := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == connectfake.PathToken {
			in <- struct{}{}
			<-out
		}
		fake.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(func() { srv.Close() })
	return srv.URL, in, out
}

// waitUntil polls cond for what happens on a goroutine the test cannot join
// (a detached clean-up); the bound only keeps a broken build from hanging.
func waitUntil(cond func() bool) bool { return waitFor(10*time.Second, cond) }

func waitFor(bound time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(bound); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// A config change from another node (storage written, then Invalidate) that
// lands while this node loads the old config must not leave the old engine
// cached.
func TestConfigInvalidationDuringLoadIsNotLost(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	inner := e.storage
	g := gateStorage(e)
	e.b.resetSnapshot() // the next request loads the config from storage

	gt := g.park("get", configStoragePath)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = e.do(logical.ReadOperation, "creds/cc", nil)
	}()
	gt.awaitParked(t) // the old config has been read, not yet published

	cfg, err := getConfig(context.Background(), inner)
	if err != nil {
		t.Fatal(err)
	}
	cfg.CredentialsID = "rotated-elsewhere"
	if err := putConfig(context.Background(), inner, cfg); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(context.Background(), configStoragePath)
	close(gt.release)
	<-done

	eng, err := e.b.getSnapshot(context.Background(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	if eng.config.CredentialsID != "rotated-elsewhere" {
		t.Errorf("the engine loaded before the invalidation is still cached (credentials %q)", eng.config.CredentialsID)
	}
}
