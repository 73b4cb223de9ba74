package instacart

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// listSizeStorage records the largest answer to a List under a prefix.
type listSizeStorage struct {
	logical.Storage
	mu      sync.Mutex
	largest map[string]int // list prefix -> keys answered
}

func (l *listSizeStorage) List(ctx context.Context, prefix string) ([]string, error) {
	keys, err := l.Storage.List(ctx, prefix)
	l.mu.Lock()
	l.largest[prefix] = max(l.largest[prefix], len(keys))
	l.mu.Unlock()
	return keys, err
}

// maxTokens is the largest list of token keys (not of shard names, at most 256).
func (l *listSizeStorage) maxTokens() (prefix string, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p, k := range l.largest {
		if k > n && tokenRole(p) != "" && p != userTokenPrefix(tokenRole(p)) {
			prefix, n = p, k
		}
	}
	return prefix, n
}

// storeUserTokens stores n per-user tokens of role expiring at exp, as reads would.
func storeUserTokens(t *testing.T, e *testEnv, role string, n int, exp time.Time) {
	t.Helper()
	r, err := e.b.getRole(context.Background(), e.storage, role)
	if err != nil || r == nil {
		t.Fatalf("role %s: %v", role, err)
	}
	for i := range n {
		user := fmt.Sprintf("store-%d", i)
		tok := &issuedToken{revocable: revocable{AccessToken: "placeholder-" + user, ExpiresAt: exp}, UserID: user, RoleHash: r.hash}
		if err := putJSON(context.Background(), e.storage, tokenKey(role, user), tok); err != nil {
			t.Fatal(err)
		}
	}
}

// A pass over many users lists one shard at a time: no list answers more
// than a shard's keys, however many users there are.
func TestTidyListsAShardAtATime(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	const users = 5000
	storeUserTokens(t, e, "shoppers", users, e.b.now().Add(time.Hour))
	sized := &listSizeStorage{Storage: e.storage, largest: map[string]int{}}
	e.storage = sized

	e.advance(2 * time.Hour)
	resp := e.mustOK(logical.UpdateOperation, "tidy", nil)
	if resp.Data["expired_tokens_removed"] != users || resp.Data["tokens_checked"] != users {
		t.Errorf("tidy = %v, want all %d checked and removed", resp.Data, users)
	}
	// 5,000 users over 256 shards: ~20 a shard; 60 leaves room for chance.
	if prefix, n := sized.maxTokens(); n > 60 {
		t.Errorf("a list under %s answered %d keys: the pass held more than a shard", prefix, n)
	}
	if left := len(storedRoleKeys(t, e.storage, "shoppers")); left != 0 {
		t.Errorf("%d tokens left", left)
	}
	if n, ok := e.b.counts.get("shoppers"); !ok || n != 0 {
		t.Errorf("count after tidy = %d (known %v), want 0", n, ok)
	}
}

// The gauges never list stored or queued tokens: the counts are kept as
// tokens are stored, queued and removed.
func TestGaugesListNoTokens(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	readUsers(e, "shoppers", "store-1", "store-2", "store-3")
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	counted := &countingStorage{Storage: e.storage}
	e.storage = counted
	s := e.scrape()
	for _, p := range counted.listed() {
		queue := strings.HasPrefix(p, revokingStoragePrefix) && p != revokingStoragePrefix
		if queue || tokenRole(p+"x") != "" || p == tokenStoragePrefix || p == userTokenStoragePrefix {
			t.Errorf("a scrape listed %q", p)
		}
	}
	for role, want := range map[string]float64{"shoppers": 3, "cc": 1} {
		if got := s.get(metricSharedTokens, map[string]string{"role": role}); got != want {
			t.Errorf("%s{%s} = %v, want %v", metricSharedTokens, role, got, want)
		}
	}
	// A flush and a tidy keep the counts.
	e.mustOK(logical.DeleteOperation, "cache/shoppers", nil)
	readUsers(e, "shoppers", "store-4")
	e.advance(25 * time.Hour)
	e.mustOK(logical.UpdateOperation, "tidy", nil)
	readUsers(e, "shoppers", "store-5", "store-6")
	s = e.scrape()
	if got := s.get(metricSharedTokens, map[string]string{"role": "shoppers"}); got != 2 {
		t.Errorf("after flush, tidy and two new users: %s{shoppers} = %v, want 2", metricSharedTokens, got)
	}
	if got := s.get(metricSharedTokens, map[string]string{"role": "cc"}); got != 0 {
		t.Errorf("after its token expired and tidy: %s{cc} = %v, want 0", metricSharedTokens, got)
	}
}

// usersInOneShard returns two users whose tokens share a shard.
func usersInOneShard() (string, string) {
	seen := map[string]string{}
	for i := 0; ; i++ {
		u := fmt.Sprintf("store-%d", i)
		sh := userHash(u)[:shardDigits]
		if other, ok := seen[sh]; ok {
			return other, u
		}
		seen[sh] = u
	}
}

// Tidy deletes side by side: two deletes of one shard are in flight at once
// (on raft each waits for a log write, which raft shares among them).
func TestTidyDeletesSideBySide(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	u1, u2 := usersInOneShard()
	exp := e.b.now().Add(time.Hour)
	storeUserTokens(t, e, "shoppers", 0, exp)
	for _, u := range []string{u1, u2} {
		r, _ := e.b.getRole(context.Background(), e.storage, "shoppers")
		tok := &issuedToken{revocable: revocable{AccessToken: "placeholder-" + u, ExpiresAt: exp}, UserID: u, RoleHash: r.hash}
		if err := putJSON(context.Background(), e.storage, tokenKey("shoppers", u), tok); err != nil {
			t.Fatal(err)
		}
	}
	g := gateStorage(e)
	d1 := g.park("delete", tokenKey("shoppers", u1))
	d2 := g.park("delete", tokenKey("shoppers", u2))
	e.advance(2 * time.Hour)
	pass := e.b.startTidy(e.storage)
	d1.awaitParked(t) // each parked delete holds its worker:
	d2.awaitParked(t) // one at a time, the second would never be reached
	close(d1.release)
	close(d2.release)
	<-pass.done
	if pass.err != nil || pass.counts.get(tidyExpired) != 2 {
		t.Errorf("pass: %v, %v", pass.err, pass.status())
	}
}

// A pass cut short (the mount cleaned up mid-way) leaves its place; the next
// pass, in a new process, starts after it, and still covers everything.
func TestTidyResumesWhereACutPassStopped(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	const users = 600
	storeUserTokens(t, e, "shoppers", users, e.b.now().Add(time.Hour))
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	e.advance(2 * time.Hour)
	g := gateStorage(e)
	g.honourCtx = true
	// The pass is held as it records the third unit it finished: "cc"'s
	// folder, "shoppers"'s (empty) folder, then its first shard.
	parked := g.park("put", tidyCursorPath)
	first := e.b.startTidy(e.storage)
	for i := 1; ; i++ {
		parked.awaitParked(t)
		if i == 3 {
			break
		}
		next := g.park("put", tidyCursorPath)
		close(parked.release)
		parked = next
	}
	e.b.bg.cancel() // Vault cleans the mount up mid-pass
	close(parked.release)
	<-first.done
	if first.err == nil {
		t.Fatal("the cut pass reports success")
	}
	cur, err := getJSON[tidyCursor](context.Background(), e.storage, tidyCursorPath)
	if err != nil || cur == nil || cur.Role != "shoppers" || cur.Unit == "" {
		t.Fatalf("cursor = %+v, %v; want a shard of shoppers", cur, err)
	}
	removed := first.counts.get(tidyExpired)
	left := len(storedRoleKeys(t, e.storage, "shoppers"))

	e.b = reloadBackend(t, e)
	e.advance(2 * time.Hour)
	resp := e.mustOK(logical.UpdateOperation, "tidy", nil)
	if resp.Data["resumed_after"] != "shoppers/"+cur.Unit {
		t.Errorf("resumed_after = %v, want shoppers/%s", resp.Data["resumed_after"], cur.Unit)
	}
	if got := resp.Data["expired_tokens_removed"]; got != left {
		t.Errorf("the resumed pass removed %v, want the %d the cut one (which removed %d) left", got, left, removed)
	}
	if n := len(storedRoleKeys(t, e.storage, "shoppers")); n != 0 {
		t.Errorf("%d expired tokens left after the resumed pass", n)
	}
	if c, _ := getJSON[tidyCursor](context.Background(), e.storage, tidyCursorPath); c != nil {
		t.Errorf("a finished pass left its cursor %+v", c)
	}
}

// GET tidy reports the pass: running, then its counts when done.
func TestTidyStatus(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	if resp := e.mustOK(logical.ReadOperation, "tidy", nil); resp.Data["running"] != false || len(resp.Data) != 1 {
		t.Errorf("before any pass: %v", resp.Data)
	}
	storeUserTokens(t, e, "shoppers", 10, e.b.now().Add(time.Hour))
	e.advance(2 * time.Hour)
	g := gateStorage(e)
	held := g.park("get", userTokenPrefix("shoppers")+"*")
	pass := e.b.startTidy(e.storage)
	held.awaitParked(t)
	resp := e.mustOK(logical.ReadOperation, "tidy", nil)
	if resp.Data["running"] != true || !strings.HasPrefix(fmt.Sprint(resp.Data["position"]), "shoppers/") {
		t.Errorf("mid-pass: %v, want running at a shard of shoppers", resp.Data)
	}
	close(held.release)
	<-pass.done
	resp = e.mustOK(logical.ReadOperation, "tidy", nil)
	if resp.Data["running"] != false || resp.Data["expired_tokens_removed"] != 10 || resp.Data["tokens_checked"] != 10 || resp.Data["finished_at"] == nil {
		t.Errorf("after the pass: %v", resp.Data)
	}
}
