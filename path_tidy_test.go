package instacart

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// storedTokenKeys lists the stored shared tokens of every role, in both
// layouts (by listing only, so it is safe while a background removal runs).
func storedTokenKeys(e *testEnv) []string {
	e.t.Helper()
	roles, err := tokenRoles(context.Background(), e.storage)
	if err != nil {
		e.t.Fatal(err)
	}
	var keys []string
	for _, r := range roles {
		keys = append(keys, storedRoleKeys(e.t, e.storage, r)...)
	}
	return keys
}

// storedRoleKeys lists role's stored tokens.
func storedRoleKeys(t testing.TB, s logical.Storage, role string) []string {
	t.Helper()
	var keys []string
	if err := walkRoleTokens(context.Background(), s, role, nil, func(_ tokenUnit, k []string) error {
		keys = append(keys, k...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// Tidy removes expired tokens, those of deleted roles among them, and
// retired credentials past their retention, from storage and memory, and says
// so. A deleted role's token that is still valid stays (out of service), as
// do tokens of rotated credentials: leases may hold them, and a flush must
// still be able to revoke them.
func TestTidyRemovesExpiredAndOrphanedTokens(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	for i := range 5 {
		e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": fmt.Sprintf("store-%d", i)})
	}
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	// A token left behind under a role that no longer exists.
	orphan, err := logical.StorageEntryJSON(tokenKey("gone", ""), &issuedToken{revocable: revocable{AccessToken: "placeholder", ExpiresAt: e.b.now().Add(time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.storage.Put(context.Background(), orphan); err != nil {
		t.Fatal(err)
	}
	const newID, newSecret = "test-client-2", "fake-second-secret-for-tests-98765"
	e.fake.AddClient(newID, newSecret)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": newID, "client_secret": newSecret})

	resp := e.mustOK(logical.UpdateOperation, "tidy", nil)
	if resp.Data["orphaned_tokens_removed"] != 0 || resp.Data["expired_tokens_removed"] != 0 {
		t.Errorf("first tidy: %v, want nothing removed while every token is valid", resp.Data)
	}
	if got := len(storedTokenKeys(e)); got != 7 {
		t.Errorf("%d tokens stored after the first tidy, want all 7 still valid", got)
	}

	e.advance(25 * time.Hour)
	resp = e.mustOK(logical.UpdateOperation, "tidy", nil)
	if resp.Data["expired_tokens_removed"] != 6 || resp.Data["orphaned_tokens_removed"] != 1 || resp.Data["retired_credentials_removed"] != 1 {
		t.Errorf("second tidy: %v, want 6 expired tokens, the deleted role's 1 and 1 retired credential set", resp.Data)
	}
	if keys := storedTokenKeys(e); len(keys) != 0 {
		t.Errorf("tokens left in storage: %v", keys)
	}
	if keys := e.b.tokens.entries.Keys(); len(keys) != 0 {
		t.Errorf("%d expired tokens left in memory", len(keys))
	}
}

// The periodic function tidies on its own, once an hour.
func TestPeriodicTidy(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"})
	rollback := func() {
		t.Helper()
		if _, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage}); err != nil {
			t.Fatal(err)
		}
	}
	rollback() // the first pass tidies (nothing to remove) and starts the hour
	e.b.bg.wg.Wait()
	if keys := storedTokenKeys(e); len(keys) != 1 {
		t.Fatalf("%d tokens stored, want the fresh one", len(keys))
	}
	e.advance(25 * time.Hour)
	rollback() // the pass runs beside the rollback, not inside its deadline
	e.b.bg.wg.Wait()
	if keys := storedTokenKeys(e); len(keys) != 0 {
		t.Errorf("the periodic tidy left %d expired tokens", len(keys))
	}
}

// Memory holds a bounded number of tokens; an evicted one that is still
// fresh costs a storage read, never a mint.
func TestTokenMemoryIsBounded(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.b.tokens = newTokenCache(5)
	var first string
	for i := range 20 {
		tok := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": fmt.Sprintf("store-%d", i)}).Data["access_token"].(string)
		if i == 0 {
			first = tok
		}
	}
	if n := e.b.tokens.entries.Len(); n > 5 {
		t.Errorf("%d tokens in memory, bound is 5", n)
	}
	mints := e.fake.Mints()
	if got := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-0"}).Data["access_token"]; got != first {
		t.Error("an evicted fresh token was not served from storage")
	}
	if e.fake.Mints() != mints {
		t.Error("an evicted fresh token was minted again")
	}
}

// Deleting a role with many stored tokens answers at once without touching
// them: no storage call under its tokens, however many there are. They stay,
// out of service, until they expire or a flush revokes them.
func TestRoleDeleteAtScale(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "roles/big", map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": "*"})
	e.mustOK(logical.UpdateOperation, "creds/big", map[string]any{"user_id": "store-1"})
	const n = 10_000
	for i := range n {
		entry, err := logical.StorageEntryJSON(tokenKey("big", fmt.Sprintf("user-%d", i)), &issuedToken{revocable: revocable{AccessToken: "placeholder", ExpiresAt: e.b.now().Add(time.Hour)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.storage.Put(context.Background(), entry); err != nil {
			t.Fatal(err)
		}
	}
	counted := &countingStorage{Storage: e.storage}
	e.storage = counted

	resp := e.mustOK(logical.DeleteOperation, "roles/big", nil)
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "DELETE cache/big") {
		t.Errorf("warnings = %q, want one saying how to revoke the role's tokens", resp.Warnings)
	}
	if got := counted.getsUnder(roleTokenPrefix("big")) + counted.getsUnder(userTokenPrefix("big")); got != 0 {
		t.Errorf("the delete read %d of the role's tokens", got)
	}
	for _, p := range counted.listed() {
		if strings.HasPrefix(p, tokenStoragePrefix) || strings.HasPrefix(p, userTokenStoragePrefix) {
			t.Errorf("the delete listed %q", p)
		}
	}
	if keys := e.b.tokens.memoryKeys("big"); len(keys) != 0 {
		t.Errorf("%d of the deleted role's tokens left in memory", len(keys))
	}
	if left := len(storedTokenKeys(e)); left != n+1 {
		t.Errorf("%d tokens stored after the delete, want all %d, out of service", left, n+1)
	}
}

// A tidy call that would outlast its request answers before the deadline
// with the counts so far, and the pass goes on in the background.
func TestTidyCallOutlastingItsRequest(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	for i := range 3 {
		e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": fmt.Sprintf("store-%d", i)})
	}
	e.advance(25 * time.Hour)
	g := gateStorage(e)
	gt := g.park("get", userTokenPrefix("shoppers")+"*") // the pass, held mid-way

	ctx, cancel := context.WithTimeout(context.Background(), tidyResponseMargin) // no time to wait
	defer cancel()
	resp, err := e.doCtx(ctx, logical.UpdateOperation, "tidy", nil)
	if err != nil || resp.IsError() {
		t.Fatalf("tidy: %v %v", resp, err)
	}
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "background") {
		t.Errorf("warnings = %q, want one saying tidy goes on in the background", resp.Warnings)
	}
	gt.awaitParked(t)
	close(gt.release)
	e.b.bg.wg.Wait()
	if keys := storedTokenKeys(e); len(keys) != 0 {
		t.Errorf("the background pass left %d expired tokens", len(keys))
	}
}
