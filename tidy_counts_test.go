package instacart

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// The counts the gauges report are checked against storage while a tidy
// pass counts: each token once, whatever reads do meanwhile. (Found by a
// review; each test failed on the first version of the counts.)

// listGateStorage parks the first List of prefix after it answered.
type listGateStorage struct {
	logical.Storage
	prefix  string
	once    sync.Once
	reached chan struct{}
	release chan struct{}
}

func (l *listGateStorage) List(ctx context.Context, prefix string) ([]string, error) {
	keys, err := l.Storage.List(ctx, prefix)
	if prefix == l.prefix {
		l.once.Do(func() {
			close(l.reached)
			<-l.release
		})
	}
	return keys, err
}

func assertCountIsStored(t *testing.T, e *testEnv, role string) {
	t.Helper()
	stored := len(storedRoleKeys(t, e.storage, role))
	if n, ok := e.b.counts.get(role); !ok || n != int64(stored) {
		t.Errorf("count of %s = %d (known %v), stored %d", role, n, ok, stored)
	}
}

// A restart that cut a pass leaves a cursor inside a role: the next
// process's first pass, resumed there, counts that role across both ends.
func TestResumedPassCountsTheCursorRole(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	storeUserTokens(t, e, "shoppers", 600, e.b.now().Add(24*time.Hour))
	if err := putJSON(context.Background(), e.storage, tidyCursorPath, tidyCursor{Role: "shoppers", Unit: "40"}); err != nil {
		t.Fatal(err)
	}
	e.b = reloadBackend(t, e)
	if err := e.b.Initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	e.b.bg.wg.Wait()
	assertCountIsStored(t, e, "shoppers")
	if got := e.scrape().get(metricSharedTokens, map[string]string{"role": "shoppers"}); got != 600 {
		t.Errorf("%s{shoppers} = %v, want 600", metricSharedTokens, got)
	}
}

// A read that moves its own v0.1.0 token after tidy listed the role's
// folder is counted once.
func TestCountWhileAReadMovesItsToken(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	readUsers(e, "shoppers", "store-0", "store-1", "store-2")
	toPreviousLayout(t, e.storage, "shoppers")
	e.b = reloadBackend(t, e)
	lg := &listGateStorage{Storage: e.storage, prefix: roleTokenPrefix("shoppers"), reached: make(chan struct{}), release: make(chan struct{})}
	e.storage = lg
	pass := e.b.startTidy(e.storage)
	select {
	case <-lg.reached:
	case <-time.After(10 * time.Second):
		t.Fatal("tidy never listed the folder")
	}
	readUsers(e, "shoppers", "store-0") // moves store-0's token itself
	close(lg.release)
	<-pass.done
	if pass.err != nil {
		t.Fatal(pass.err)
	}
	if n := len(storedRoleKeys(t, e.storage, "shoppers")); n != 3 {
		t.Fatalf("stored = %d, want 3", n)
	}
	assertCountIsStored(t, e, "shoppers")
}

// A token stored in a shard the pass has yet to list is counted once.
func TestCountWhileAUserArrives(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	readUsers(e, "shoppers", "store-0", "store-1")
	g := gateStorage(e)
	parked := g.park("put", tidyCursorPath) // after the first unit: no shard listed yet
	pass := e.b.startTidy(e.storage)
	parked.awaitParked(t)
	readUsers(e, "shoppers", "store-7")
	close(parked.release)
	<-pass.done
	if pass.err != nil {
		t.Fatal(pass.err)
	}
	assertCountIsStored(t, e, "shoppers")
}

// An entry tidy cannot decode is skipped, not a wall: the pass goes on, and
// so does every later one.
func TestCorruptEntryDoesNotStopTidy(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	readUsers(e, "shoppers", "store-0")
	bad := userTokenPrefix("shoppers") + "00/junk"
	if err := e.storage.Put(context.Background(), &logical.StorageEntry{Key: bad, Value: []byte("not json")}); err != nil {
		t.Fatal(err)
	}
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	e.advance(25 * time.Hour)
	resp := e.mustOK(logical.UpdateOperation, "tidy", nil)
	if resp.Data["corrupt_entries_skipped"] != 1 || resp.Data["expired_tokens_removed"] != 2 || resp.Data["error"] != nil {
		t.Errorf("tidy = %v, want the junk skipped and both expired tokens removed", resp.Data)
	}
	if c, _ := getJSON[tidyCursor](context.Background(), e.storage, tidyCursorPath); c != nil {
		t.Errorf("the pass stopped at %+v", c)
	}
}

// GET tidy while a resumed pass starts is race-free (go test -race).
func TestTidyStatusOfAResumedPass(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	readUsers(e, "shoppers", "store-0")
	if err := putJSON(context.Background(), e.storage, tidyCursorPath, tidyCursor{Role: "shoppers", Unit: "40"}); err != nil {
		t.Fatal(err)
	}
	g := gateStorage(e)
	parked := g.park("get", tidyCursorPath)
	pass := e.b.startTidy(e.storage)
	parked.awaitParked(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			e.mustOK(logical.ReadOperation, "tidy", nil)
		}
	}()
	close(parked.release)
	<-done
	<-pass.done
	if got := e.mustOK(logical.ReadOperation, "tidy", nil).Data["resumed_after"]; got != "shoppers/40" {
		t.Errorf("resumed_after = %v", got)
	}
}
