package instacart

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// gatedStorage wraps a backend's storage so a test can force an interleaving:
// a gated call runs, then parks until the test releases it, so whatever the
// test does meanwhile lands exactly between that storage call and what the
// caller does with its result. It can also refuse writes the way a
// performance standby's storage does.
type gatedStorage struct {
	logical.Storage

	mu    sync.Mutex
	gates map[string]*gate // "get:<key>", "put:<key>", ...

	readOnly   atomic.Bool
	failPut    func(key string) error
	failDelete func(key string) error
	// honourCtx refuses calls on a done context, as Vault's gRPC storage does.
	honourCtx bool
}

// gate is one parked call: reached closes when the call is parked, and the
// call returns once release is closed.
type gate struct {
	reached, release chan struct{}
}

// gateStorage swaps e's storage for a gatedStorage over it.
func gateStorage(e *testEnv) *gatedStorage {
	g := &gatedStorage{Storage: e.storage, gates: map[string]*gate{}}
	e.storage = g
	return g
}

// park gates the next call of op ("get", "put", "delete") on key; a key
// ending in "*" gates the next call on any key with that prefix.
func (g *gatedStorage) park(op, key string) *gate {
	gt := &gate{reached: make(chan struct{}), release: make(chan struct{})}
	g.mu.Lock()
	g.gates[op+":"+key] = gt
	g.mu.Unlock()
	return gt
}

func (g *gatedStorage) wait(op, key string) {
	g.mu.Lock()
	name := op + ":" + key
	gt := g.gates[name]
	if gt == nil {
		for k, v := range g.gates {
			if strings.HasSuffix(k, "*") && strings.HasPrefix(name, strings.TrimSuffix(k, "*")) {
				name, gt = k, v
				break
			}
		}
	}
	delete(g.gates, name)
	g.mu.Unlock()
	if gt != nil {
		close(gt.reached)
		<-gt.release
	}
}

// awaitParked fails the test if the gated call is not reached in time (a
// bound against a hung test, not a timing assumption).
func (gt *gate) awaitParked(t *testing.T) {
	t.Helper()
	select {
	case <-gt.reached:
	case <-time.After(10 * time.Second):
		t.Fatal("the gated storage call was never reached")
	}
}

// errReadOnlyOverGRPC is how a plugin sees a read-only refusal: the sdk's
// gRPC storage client turns every storage error into a plain string error.
var errReadOnlyOverGRPC = errors.New(logical.ErrReadOnly.Error())

func (g *gatedStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if g.honourCtx && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	entry, err := g.Storage.Get(ctx, key)
	g.wait("get", key)
	return entry, err
}

func (g *gatedStorage) Put(ctx context.Context, entry *logical.StorageEntry) error {
	if g.readOnly.Load() {
		return errReadOnlyOverGRPC
	}
	if g.honourCtx && ctx.Err() != nil {
		return ctx.Err()
	}
	if g.failPut != nil {
		if err := g.failPut(entry.Key); err != nil {
			return err
		}
	}
	err := g.Storage.Put(ctx, entry)
	g.wait("put", entry.Key)
	return err
}

func (g *gatedStorage) Delete(ctx context.Context, key string) error {
	if g.readOnly.Load() {
		return errReadOnlyOverGRPC
	}
	if g.honourCtx && ctx.Err() != nil {
		return ctx.Err()
	}
	if g.failDelete != nil {
		if err := g.failDelete(key); err != nil {
			return err
		}
	}
	err := g.Storage.Delete(ctx, key)
	g.wait("delete", key)
	return err
}

// walKeys lists the write-ahead log entries in storage.
func walKeys(t *testing.T, s logical.Storage) []string {
	t.Helper()
	keys, err := s.List(context.Background(), "wal/")
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func hasPrefix(keys []string, prefix string) bool {
	for _, k := range keys {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

// On a performance standby storage refuses writes with logical.ErrReadOnly;
// returning exactly that is how Vault knows to forward the request to the
// active node. No token minted there may be kept in memory only.
func TestReadOnlyStorageForwardsToActive(t *testing.T) {
	t.Run("storage refuses the write", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		g := gateStorage(e)
		g.readOnly.Store(true)
		for _, path := range []string{"creds/cc", "creds/cc-excl"} {
			_, err := e.do(logical.ReadOperation, path, nil)
			if err != logical.ErrReadOnly {
				t.Errorf("%s: err = %v, want logical.ErrReadOnly", path, err)
			}
		}
		for _, info := range e.fake.Tokens() {
			if !info.Revoked {
				t.Error("a token minted on read-only storage is live and held nowhere")
			}
		}
		if e.b.tokens.get(tokenKey("cc", "")) != nil {
			t.Error("a shared token was kept in memory only")
		}
		if e.fake.Mints() > 1 {
			t.Errorf("mints = %d: the exclusive read minted before finding storage read-only", e.fake.Mints())
		}
		_, err := e.do(logical.UpdateOperation, "roles/new", map[string]any{"grant_type": "client_credentials"})
		if err != logical.ErrReadOnly {
			t.Errorf("role write: err = %v, want logical.ErrReadOnly", err)
		}
		_, err = e.do(logical.DeleteOperation, "config", nil)
		if err != logical.ErrReadOnly {
			t.Errorf("config delete: err = %v, want logical.ErrReadOnly", err)
		}
	})

	t.Run("a performance standby forwards before minting", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		cached := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
		e.b.tokens.clear()
		e.fake.ResetCounters()
		e.sys.ReplicationStateVal = consts.ReplicationPerformanceStandby
		if got := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]; got != cached {
			t.Error("a standby did not serve the stored shared token")
		}
		if _, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-9"}); err != logical.ErrReadOnly {
			t.Errorf("cold shared read on a standby: err = %v, want logical.ErrReadOnly", err)
		}
		// Config writes and flushes are forwarded before they call Connect.
		const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
		e.fake.AddClient(newID, newSecret)
		if _, err := e.do(logical.UpdateOperation, "config", map[string]any{"client_id": newID, "client_secret": newSecret}); err != logical.ErrReadOnly {
			t.Errorf("config write on a standby: err = %v, want logical.ErrReadOnly", err)
		}
		if _, err := e.do(logical.DeleteOperation, "cache/cc", nil); err != logical.ErrReadOnly {
			t.Errorf("flush on a standby: err = %v, want logical.ErrReadOnly", err)
		}
		if e.fake.Mints() != 0 || e.fake.Revocations() != 0 {
			t.Errorf("a standby minted %d and revoked %d tokens", e.fake.Mints(), e.fake.Revocations())
		}
	})
}
