package instacart

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// countingGate holds every token request at a gate, counting how many are
// in flight at Connect at once.
type countingGate struct {
	mu                sync.Mutex
	inFlight, maxSeen int
	arrived           chan struct{}
	release           chan struct{}
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
// that leaves while queued sends nothing to Connect.
func TestQueuedMintHonoursDeadline(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	gate, url := newCountingGate(t, e.fake)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"base_url": url, "client_secret": testSecret, "verify": false, "max_concurrent_mints": 1})

	first := make(chan error, 1)
	go func() {
		_, err := e.do(logical.ReadOperation, "creds/cc-excl", nil)
		first <- err
	}()
	<-gate.arrived // the only slot is taken

	g := gateStorage(e)
	gt := g.park("put", "wal/*") // the second read's WAL entry: next it queues for a slot
	ctx, cancel := context.WithCancel(context.Background())
	queued := make(chan error, 1)
	go func() {
		_, err := e.doCtx(ctx, logical.ReadOperation, "creds/cc-excl", nil)
		queued <- err
	}()
	gt.awaitParked(t)
	cancel()
	close(gt.release)
	if err := <-queued; codedStatus(err) != http.StatusGatewayTimeout {
		t.Errorf("queued read: err = %v, want a 504", err)
	}
	gate.release <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if got := e.fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("Connect saw %d token requests, want 1: the queued read left before sending", got)
	}
}
