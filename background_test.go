package instacart

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// Cleaning up the mount ends the work that outlives requests (a shared
// flight, a detached exclusive mint) before it returns: nothing touches
// storage afterwards.
func TestCleanupEndsDetachedWork(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	g := newConnectGate(t, e.fake)
	behindGate(e, g, nil)
	rec := &afterFlagStorage{Storage: e.storage}
	e.storage = rec
	s := gateStorage(e)
	advance := movableClock(e)
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
