package instacart

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	failDelete func(key string) error
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
	entry, err := g.Storage.Get(ctx, key)
	g.wait("get", key)
	return entry, err
}

func (g *gatedStorage) Put(ctx context.Context, entry *logical.StorageEntry) error {
	if g.readOnly.Load() {
		return errReadOnlyOverGRPC
	}
	err := g.Storage.Put(ctx, entry)
	g.wait("put", entry.Key)
	return err
}

func (g *gatedStorage) Delete(ctx context.Context, key string) error {
	if g.readOnly.Load() {
		return errReadOnlyOverGRPC
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
