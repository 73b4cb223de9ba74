package instacart

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// An exclusive mint the caller gives up on (the app disconnects, its deadline
// passes) while Connect is minting is still seen through, and the token that
// arrives is revoked: nobody will ever hold its lease.
func TestAbandonedExclusiveMintIsRevoked(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	url, arrived, release := gatedConnect(t, e.fake)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": url, "client_secret": testSecret, "verify": false})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := e.doCtx(ctx, logical.ReadOperation, "creds/cc-excl", nil)
		done <- err
	}()
	<-arrived // the token request is at Connect
	cancel()  // the caller gives up
	if err := <-done; codedStatus(err) != http.StatusGatewayTimeout {
		t.Fatalf("abandoned read: err = %v, want a 504", err)
	}
	close(release) // Connect answers after all
	if !waitUntil(func() bool { return e.fake.Mints() == 1 && e.fake.Revocations() == 1 }) {
		t.Fatalf("mints %d, revocations %d: the abandoned token was not revoked", e.fake.Mints(), e.fake.Revocations())
	}
	for _, info := range e.fake.Tokens() {
		if !info.Revoked {
			t.Error("the abandoned token is live at Connect")
		}
	}
	if !waitUntil(func() bool { return len(walKeys(t, e.storage)) == 0 }) {
		t.Errorf("%d write-ahead log entries left", len(walKeys(t, e.storage)))
	}
}

// Retired credentials outlive the longest token Connect handed out, even
// when that is longer than documented and the process restarted since.
func TestRetentionOfLongLivedTokensSurvivesRestart(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.fake.SetTokenLifetime(72 * time.Hour)
	lease := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	tok := lease.Data["access_token"].(string)

	e.b = reloadBackend(t, e) // a restart forgets what was seen in memory
	const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
	e.fake.AddClient(newID, newSecret)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": newID, "client_secret": newSecret})
	e.advance(48 * time.Hour)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 1}) // prunes what has expired
	if err := revoke(e, lease.Secret); err != nil {
		t.Fatal(err)
	}
	if e.fake.TokenLive(tok) {
		t.Error("a 72 h token outlived the credentials kept to revoke it")
	}
}

func newCountingGate(t *testing.T, fake *connectfake.Server) (*countingGate, string) {
	g := &countingGate{arrived: make(chan struct{}, 100), release: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == connectfake.PathToken {
			g.mu.Lock()
			g.inFlight++
			g.maxSeen = max(g.maxSeen, g.inFlight)
			g.mu.Unlock()
			g.arrived <- struct{}{}
			<-g.release
			defer func() { g.mu.Lock(); g.inFlight--; g.mu.Unlock() }()
		}
		fake.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return g, srv.URL
}

// First-time readers beyond max_concurrent_mints wait for a slot instead of
// all hitting Connect at once.
func TestConcurrentMintsAreBounded(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	gate, url := newCountingGate(t, e.fake)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": url, "client_secret": testSecret, "verify": false, "max_concurrent_mints": 2})

	const readers = 12
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": fmt.Sprintf("store-%d", i)})
			if err == nil && resp.IsError() {
				err = resp.Error()
			}
			errs <- err
		}()
	}
	for range readers { // let them through one at a time
		<-gate.arrived
		gate.release <- struct{}{}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a read failed: %v", err)
		}
	}
	if gate.maxSeen > 2 {
		t.Errorf("%d token requests were in flight at once; max_concurrent_mints is 2", gate.maxSeen)
	}
	if got := e.fake.Mints(); got != readers {
		t.Errorf("mints = %d, want %d (one per user)", got, readers)
	}
}

// A reader waiting for a mint slot honours its request's deadline, and one
// that leaves while queued sends nothing to Connect and leaves nothing
// behind: for an exclusive read, no write-ahead log entry; for a shared one,
// no mint started on its behalf.
func TestQueuedMintHonoursDeadline(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		data       map[string]any
	}{
		{"exclusive", "creds/cc-excl", nil},
		{"shared", "creds/shoppers", map[string]any{"user_id": "store-2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			gate, url := newCountingGate(t, e.fake)
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": url, "client_secret": testSecret, "verify": false, "max_concurrent_mints": 1})
			queued := make(chan struct{}, 1)
			e.b.hooks.mintQueued = func() { queued <- struct{}{} }

			first := make(chan error, 1)
			go func() {
				_, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"})
				first <- err
			}()
			<-gate.arrived // the only slot is taken

			ctx, cancel := context.WithCancel(context.Background())
			waiting := make(chan error, 1)
			go func() {
				_, err := e.doCtx(ctx, logical.UpdateOperation, tc.path, tc.data)
				waiting <- err
			}()
			<-queued // the second read waits for the slot
			cancel()
			if err := <-waiting; codedStatus(err) != http.StatusGatewayTimeout {
				t.Errorf("queued read: err = %v, want a 504", err)
			}
			gate.release <- struct{}{}
			if err := <-first; err != nil {
				t.Fatal(err)
			}
			e.b.hooks.mintQueued = nil
			// Anything still queued would now reach the gate; a later read
			// proves the gate is empty by being the next to arrive.
			later := make(chan error, 1)
			go func() {
				_, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-3"})
				later <- err
			}()
			<-gate.arrived
			gate.release <- struct{}{}
			if err := <-later; err != nil {
				t.Fatal(err)
			}
			if got := e.fake.Requests(connectfake.PathToken); got != 2 {
				t.Errorf("Connect saw %d token requests, want 2: the queued read left before sending", got)
			}
			if keys := walKeys(t, e.storage); len(keys) != 0 {
				t.Errorf("%d write-ahead log entries left", len(keys))
			}
		})
	}
}

// countingGate holds every token request at a gate, counting how many are
// in flight at Connect at once.
type countingGate struct {
	mu                sync.Mutex
	inFlight, maxSeen int
	arrived           chan struct{}
	release           chan struct{}
}

// An authorization code whose reader left while queued for a mint slot was
// never sent: it may be sent again, even though the request that claimed it
// is over when the claim is released (storage refuses a done context).
func TestQueuedCodeIsReleased(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	gate, url := newCountingGate(t, e.fake)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": url, "client_secret": testSecret, "verify": false, "max_concurrent_mints": 1})
	g := gateStorage(e)
	g.honourCtx = true
	queued := make(chan struct{}, 1)
	e.b.hooks.mintQueued = func() { queued <- struct{}{} }
	code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")

	first := make(chan error, 1)
	go func() {
		_, err := e.do(logical.ReadOperation, "creds/cc-excl", nil)
		first <- err
	}()
	<-gate.arrived // the only slot is taken

	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan error, 1)
	go func() {
		_, err := e.doCtx(ctx, logical.UpdateOperation, "creds/link", map[string]any{"code": code})
		waiting <- err
	}()
	<-queued
	cancel()
	if err := <-waiting; codedStatus(err) != http.StatusGatewayTimeout {
		t.Fatalf("queued read: err = %v, want a 504", err)
	}
	gate.release <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	e.b.hooks.mintQueued = nil
	done := make(chan *logical.Response, 1)
	go func() {
		resp, _ := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
		done <- resp
	}()
	select {
	case <-gate.arrived:
		gate.release <- struct{}{}
	case resp := <-done: // answered without asking Connect
		t.Fatalf("the code was never sent, yet a retry with it was refused: %v", resp)
	}
	if resp := <-done; resp == nil || resp.IsError() {
		t.Fatalf("a retry with the released code failed: %v", resp)
	}
}
