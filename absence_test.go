package instacart

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
)

// heldRequests holds the first token request at the transport until
// release is closed.
type heldRequests struct {
	reached, release chan struct{}
	once             sync.Once
}

type holdTransport struct {
	h    *heldRequests
	next http.RoundTripper
}

func (t holdTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Path == "/v2/oauth/token" {
		t.h.once.Do(func() {
			close(t.h.reached)
			<-t.h.release
		})
	}
	return t.next.RoundTrip(req)
}

// holdTokenRequests has e's Connect clients hold their first token request.
func holdTokenRequests(e *testEnv) *heldRequests {
	h := &heldRequests{reached: make(chan struct{}), release: make(chan struct{})}
	e.b.hooks.connectConfig = func(c *connect.Config) {
		next := c.Transport
		if next == nil {
			next = http.DefaultTransport
		}
		c.Transport = holdTransport{h: h, next: next}
	}
	e.b.resetSnapshot() // the next request builds a client through the hook
	return h
}

func (h *heldRequests) awaitHeld(t *testing.T) {
	t.Helper()
	select {
	case <-h.reached:
	case <-time.After(10 * time.Second): // a bound against a hung test
		t.Fatal("no token request was sent")
	}
}

// otherNode is a second backend on e's storage and system view: after a
// failover, the new active node; or the node that writes while e's is a
// standby or secondary. It is initialized as Vault does on mounting.
func otherNode(t *testing.T, e *testEnv) *testEnv {
	t.Helper()
	b := reloadBackend(t, e)
	if err := b.initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	return &testEnv{t: t, b: b, storage: e.storage, fake: e.fake, sys: e.sys, logs: e.logs}
}

func readUser(e *testEnv, user string) string {
	e.t.Helper()
	return e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": user}).Data["access_token"].(string)
}

func TestKeyViewNeverForgetsANotedKey(t *testing.T) {
	v := newKeyView()
	for i := range 200_000 {
		v.note(tokenKey("shoppers", fmt.Sprintf("user-%d", i)))
	}
	for i := range 200_000 {
		if key := tokenKey("shoppers", fmt.Sprintf("user-%d", i)); !v.noted(key) {
			t.Fatalf("key %d noted, then not", i)
		}
	}
	passed := 0
	for i := range 100_000 {
		if v.noted(tokenKey("shoppers", fmt.Sprintf("never-%d", i))) {
			passed++
		}
	}
	// 4 hashes over 2^23 bits after 200,000 keys: about 1 in 13,000.
	if passed > 100 {
		t.Errorf("%d of 100,000 keys never noted pass for noted", passed)
	}
}

// On a mount that held no token when it started, a new user's first read
// mints without asking storage for the user's token; anything that can
// break the proof makes it ask again.
func TestNewUserReadWithoutStorageRead(t *testing.T) {
	newUserGets := func(e *testEnv, user string) int {
		t.Helper()
		reads := &countingStorage{Storage: e.storage}
		e.storage = reads
		defer func() { e.storage = reads.Storage }()
		readUser(e, user)
		return reads.getsUnder(tokenKey("shoppers", user))
	}

	t.Run("a mount empty at start reads nothing", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		for _, u := range []string{"store-1", "store-2"} {
			if n := newUserGets(e, u); n != 0 {
				t.Errorf("%s: %d storage reads of a new user's key, want 0", u, n)
			}
		}
		// Evicted from memory, a user's token is read from storage, not minted.
		e.b.tokens.entries.Remove(tokenKey("shoppers", "store-1"))
		mints := e.fake.Mints()
		if n := newUserGets(e, "store-1"); n != 1 || e.fake.Mints() != mints {
			t.Errorf("an evicted user's read made %d storage reads and %d mints, want 1 and 0", n, e.fake.Mints()-mints)
		}
	})

	t.Run("tokens stored at start: a new active node reads", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		tok := readUser(e, "store-1")
		other := otherNode(t, e) // failover: storage holds store-1's token
		if got := readUser(other, "store-1"); got != tok {
			t.Error("the new active node did not serve the stored token")
		}
		if e.fake.Mints() != 1 {
			t.Errorf("mints = %d, want 1", e.fake.Mints())
		}
	})

	t.Run("a previous release's token at start is found", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		tok := readUser(e, "store-1")
		toPreviousLayout(t, e.storage, "shoppers")
		other := otherNode(t, e)
		if got := readUser(other, "store-1"); got != tok {
			t.Error("the token at the previous release's key was not served")
		}
		if e.fake.Mints() != 1 {
			t.Errorf("mints = %d, want 1", e.fake.Mints())
		}
	})

	t.Run("another node's write, told by invalidate", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		other := otherNode(t, e)
		tok := readUser(other, "store-1")
		e.b.invalidate(context.Background(), tokenKey("shoppers", "store-1"))
		if got := readUser(e, "store-1"); got != tok {
			t.Error("a token another node stored, and Vault told of, was not served")
		}
		if e.fake.Mints() != 1 {
			t.Errorf("mints = %d, want 1", e.fake.Mints())
		}
		if n := newUserGets(e, "store-2"); n != 1 {
			t.Errorf("after an invalidation a new user's read made %d storage reads, want 1", n)
		}
	})

	t.Run("an invalidation while the folders are listed", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		b := reloadBackend(t, e)
		listed := &parkedList{Storage: e.storage, prefix: userTokenStoragePrefix, reached: make(chan struct{}), release: make(chan struct{})}
		done := make(chan error, 1)
		go func() { done <- b.initialize(context.Background(), &logical.InitializationRequest{Storage: listed}) }()
		select {
		case <-listed.reached: // the listing found no token
		case <-time.After(10 * time.Second):
			t.Fatal("initialize did not list the token folders")
		}
		tok := readUser(otherNode(t, e), "store-1")
		b.invalidate(context.Background(), tokenKey("shoppers", "store-1"))
		close(listed.release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		nb := &testEnv{t: t, b: b, storage: e.storage, fake: e.fake, sys: e.sys, logs: e.logs}
		if got := readUser(nb, "store-1"); got != tok {
			t.Error("a token stored while the folders were listed, and told of, was not served")
		}
	})

	t.Run("a token stored while the folders are listed", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		b := reloadBackend(t, e)
		put := &parkedPut{Storage: e.storage, key: tokenKey("shoppers", "store-1"), reached: make(chan struct{}), release: make(chan struct{})}
		nb := &testEnv{t: t, b: b, storage: put, fake: e.fake, sys: e.sys, logs: e.logs}
		res := goDo(nb, context.Background(), logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"})
		select {
		case <-put.reached: // in flight, not yet written: the listing cannot see it
		case <-time.After(10 * time.Second):
			t.Fatal("the token was never stored")
		}
		if err := b.initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
			t.Fatal(err)
		}
		close(put.release)
		first := <-res
		if first.err != nil || first.resp.IsError() {
			t.Fatalf("first read: %v %v", first.err, first.resp)
		}
		b.tokens.entries.Remove(tokenKey("shoppers", "store-1"))
		if got := readUser(nb, "store-1"); got != first.resp.Data["access_token"] {
			t.Error("the token stored while the view was built was not found")
		}
		if e.fake.Mints() != 1 {
			t.Errorf("mints = %d, want 1", e.fake.Mints())
		}
	})

	t.Run("a replication state other than the view's", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		tok := readUser(otherNode(t, e), "store-1") // written, and this node not told
		e.sys.ReplicationStateVal = consts.ReplicationPerformanceStandby
		if got := readUser(e, "store-1"); got != tok {
			t.Error("a standby did not serve the token stored by the active node")
		}
		e.sys.ReplicationStateVal = consts.ReplicationUnknown
		if n := newUserGets(e, "store-2"); n != 1 {
			t.Errorf("after a replication state change a new user's read made %d storage reads, want 1", n)
		}
	})
}

// parkedList holds the first List under prefix, after it has listed, until
// release is closed.
type parkedList struct {
	logical.Storage
	prefix           string
	reached, release chan struct{}
	once             sync.Once
}

func (p *parkedList) List(ctx context.Context, prefix string) ([]string, error) {
	keys, err := p.Storage.List(ctx, prefix)
	if prefix == p.prefix {
		p.once.Do(func() {
			close(p.reached)
			<-p.release
		})
	}
	return keys, err
}

// parkedPut holds the first Put of key, before it is written, until release
// is closed.
type parkedPut struct {
	logical.Storage
	key              string
	reached, release chan struct{}
	once             sync.Once
}

func (p *parkedPut) Put(ctx context.Context, entry *logical.StorageEntry) error {
	if entry.Key == p.key {
		p.once.Do(func() {
			close(p.reached)
			<-p.release
		})
	}
	return p.Storage.Put(ctx, entry)
}
