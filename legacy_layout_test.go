package instacart

import (
	"context"
	"fmt"
	"path"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// toPreviousLayout rewrites role's per-user tokens as v0.1.0 stored them,
// at tokens/<role>/user-<hash>, and returns how many it moved.
func toPreviousLayout(t *testing.T, s logical.Storage, role string) int {
	t.Helper()
	ctx := context.Background()
	n := 0
	for _, key := range storedRoleKeys(t, s, role) {
		base := path.Base(key)
		if !strings.HasPrefix(key, userTokenStoragePrefix) || strings.HasPrefix(base, supersededPrefix) {
			continue
		}
		entry, err := s.Get(ctx, key)
		if err != nil || entry == nil {
			t.Fatalf("reading %s: %v", key, err)
		}
		entry.Key = roleTokenPrefix(role) + legacyUserPrefix + base
		if err := s.Put(ctx, entry); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		n++
	}
	return n
}

func readUsers(e *testEnv, role string, users ...string) map[string]string {
	e.t.Helper()
	toks := map[string]string{}
	for _, u := range users {
		toks[u] = e.mustOK(logical.UpdateOperation, "creds/"+role, map[string]any{"user_id": u}).Data["access_token"].(string)
	}
	return toks
}

// After an upgrade from v0.1.0, a user's token is served from where that
// release stored it, without a mint, and moved by the read that finds it;
// tidy moves the rest in the background, and from then on reads look only
// at today's keys.
func TestPreviousReleaseTokensServedAfterUpgrade(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	users := []string{"store-0", "store-1", "store-2"}
	before := readUsers(e, "shoppers", users...)
	if n := toPreviousLayout(t, e.storage, "shoppers"); n != 3 {
		t.Fatalf("moved %d tokens to the old layout, want 3", n)
	}
	e.b = reloadBackend(t, e) // the upgrade: no initial pass has run yet
	mints := e.fake.Mints()

	if got := readUsers(e, "shoppers", "store-0")["store-0"]; got != before["store-0"] {
		t.Error("store-0 was not served the token v0.1.0 stored")
	}
	if e.fake.Mints() != mints {
		t.Error("a token v0.1.0 stored was minted again")
	}
	if t0, _ := e.b.tokens.load(context.Background(), e.storage, tokenKey("shoppers", "store-0")); t0 == nil || t0.AccessToken != before["store-0"] {
		t.Error("the read did not move store-0's token to its shard")
	}
	if old, _ := e.storage.Get(context.Background(), legacyUserKey("shoppers", "store-0")); old != nil {
		t.Error("store-0's token is still at its v0.1.0 key")
	}

	resp := e.mustOK(logical.UpdateOperation, "tidy", nil)
	if resp.Data["tokens_moved"] != 2 || resp.Data["expired_tokens_removed"] != 0 {
		t.Errorf("tidy = %v, want the 2 tokens left in the old layout moved", resp.Data)
	}
	if keys, _ := e.storage.List(context.Background(), roleTokenPrefix("shoppers")); len(keys) != 0 {
		t.Errorf("keys left in the old layout after tidy: %d", len(keys))
	}
	if e.b.legacyUserKeys.Load() {
		t.Error("after a whole pass, reads still look for v0.1.0 keys")
	}
	if got := readUsers(e, "shoppers", users...); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Error("after tidy moved them, users were not served their tokens")
	}
	if e.fake.Mints() != mints {
		t.Errorf("%d mints after the upgrade, want none", e.fake.Mints()-mints)
	}
	if got := e.scrape().get(metricSharedTokens, map[string]string{"role": "shoppers"}); got != 3 {
		t.Errorf("%s{shoppers} = %v, want 3", metricSharedTokens, got)
	}
}

// Vault initialises a mount holding tokens with a tidy pass in the
// background: it moves v0.1.0's tokens and counts what is stored.
func TestInitializeMovesPreviousReleaseTokens(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	readUsers(e, "shoppers", "store-0", "store-1")
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	toPreviousLayout(t, e.storage, "shoppers")
	e.b = reloadBackend(t, e)
	if _, ok := e.b.counts.get("shoppers"); ok {
		t.Fatal("a reloaded backend claims to know its counts before counting")
	}
	if err := e.b.Initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	e.b.bg.wg.Wait()
	if keys, _ := e.storage.List(context.Background(), roleTokenPrefix("shoppers")); len(keys) != 0 {
		t.Errorf("keys left in the old layout: %d", len(keys))
	}
	for role, want := range map[string]int64{"shoppers": 2, "cc": 1, "link": 0} {
		if n, ok := e.b.counts.get(role); !ok || n != want {
			t.Errorf("count of %s = %d (known %v), want %d", role, n, ok, want)
		}
	}
}

// A flush after the upgrade revokes the tokens still in the old layout, and
// one kept beside a newer token for its leases.
func TestFlushReachesPreviousReleaseTokens(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	toks := readUsers(e, "shoppers", "store-0", "store-1")
	toPreviousLayout(t, e.storage, "shoppers")
	// store-0's token was replaced after the upgrade: a newer one is live
	// at its key while the old one still waits in the old layout.
	e.b = reloadBackend(t, e)
	newer := readUsers(e, "shoppers", "store-9")["store-9"]
	entry, err := e.storage.Get(context.Background(), tokenKey("shoppers", "store-9"))
	if err != nil || entry == nil {
		t.Fatal(err)
	}
	entry.Key = tokenKey("shoppers", "store-0")
	if err := e.storage.Put(context.Background(), entry); err != nil {
		t.Fatal(err)
	}
	if err := e.storage.Delete(context.Background(), tokenKey("shoppers", "store-9")); err != nil {
		t.Fatal(err)
	}
	e.mustOK(logical.UpdateOperation, "tidy", nil) // keeps store-0's old token beside the newer one
	if keys := storedRoleKeys(t, e.storage, "shoppers"); len(keys) != 3 {
		t.Errorf("stored after tidy: %q, want store-0's two tokens and store-1's", keys)
	}

	resp := e.mustOK(logical.DeleteOperation, "cache/shoppers", nil)
	assertFlushCounts(t, resp, 3, 0, 0)
	for _, tok := range []string{toks["store-0"], toks["store-1"], newer} {
		if e.fake.TokenLive(tok) {
			t.Error("a token survived the flush")
		}
	}
	if keys := storedRoleKeys(t, e.storage, "shoppers"); len(keys) != 0 {
		t.Errorf("%d tokens left stored after the flush", len(keys))
	}
}
