package instacart

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// writeCountingStorage records every write and delete.
type writeCountingStorage struct {
	logical.Storage
	mu      sync.Mutex
	writes  []string
	deletes []string
}

func (c *writeCountingStorage) Put(ctx context.Context, entry *logical.StorageEntry) error {
	c.mu.Lock()
	c.writes = append(c.writes, entry.Key)
	c.mu.Unlock()
	return c.Storage.Put(ctx, entry)
}

func (c *writeCountingStorage) Delete(ctx context.Context, key string) error {
	c.mu.Lock()
	c.deletes = append(c.deletes, key)
	c.mu.Unlock()
	return c.Storage.Delete(ctx, key)
}

func (c *writeCountingStorage) reset() (writes, deletes []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	writes, deletes = c.writes, c.deletes
	c.writes, c.deletes = nil, nil
	return writes, deletes
}

// A per-user token lives in its user's shard, and a new user costs one
// durable write, its token record, and one read of its key (a token stored
// before must be found; publishing reuses that read).
func TestNewUserCostsOneWriteInItsShard(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	reads := &countingStorage{Storage: e.storage}
	counted := &writeCountingStorage{Storage: reads}
	e.storage = counted
	for _, user := range []string{"store-1", "store-2", "store-3"} {
		e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": user})
		writes, deletes := counted.reset()
		h := userHash(user)
		want := "users/shoppers/" + h[:2] + "/" + h
		if len(writes) != 1 || writes[0] != want || len(deletes) != 0 {
			t.Errorf("user %s: writes %q, deletes %q; want the one write %q", user, writes, deletes, want)
		}
		if n := reads.getsUnder(want); n != 0 {
			t.Errorf("user %s: %d reads of its key, want 0", user, n)
		}
	}
	if keys, _ := e.storage.List(context.Background(), roleTokenPrefix("shoppers")); len(keys) != 0 {
		t.Errorf("per-user tokens in the role's folder: %q", keys)
	}
	// The role-wide token stays where it was.
	e.mustOK(logical.ReadOperation, "creds/cc", nil)
	if writes, _ := counted.reset(); len(writes) != 1 || writes[0] != "tokens/cc/role" {
		t.Errorf("role-wide read wrote %q, want tokens/cc/role", writes)
	}
}

func TestTokenKeys(t *testing.T) {
	h := userHash("store-1")
	for _, tc := range []struct{ key, moved string }{
		{"tokens/shoppers/user-" + h, "users/shoppers/" + h[:2] + "/" + h},
		{"tokens/shoppers/role", ""},
		{"tokens/shoppers/old-0123", ""},
		{"tokens/shoppers/user-short", ""},
		{"users/shoppers/" + h[:2] + "/" + h, ""},
	} {
		got, ok := migratedKey(tc.key)
		if got != tc.moved || ok != (tc.moved != "") {
			t.Errorf("migratedKey(%q) = %q, %v; want %q", tc.key, got, ok, tc.moved)
		}
	}
	if got := legacyUserKey("shoppers", "store-1"); got != "tokens/shoppers/user-"+h {
		t.Errorf("legacyUserKey = %q", got)
	}
	live := tokenKey("shoppers", "store-1")
	if old := supersededKey(live, "tok"); !strings.HasPrefix(old, "users/shoppers/"+h[:2]+"/old-") {
		t.Errorf("a superseded per-user token goes to %q, want beside it in its shard", old)
	}
	if old := supersededKey(tokenKey("cc", ""), "tok"); !strings.HasPrefix(old, "tokens/cc/old-") {
		t.Errorf("a superseded role-wide token goes to %q", old)
	}
	for key, role := range map[string]string{live: "shoppers", "tokens/cc/role": "cc", "roles/cc": "", "revoking/cc/x": ""} {
		if got := tokenRole(key); got != role {
			t.Errorf("tokenRole(%q) = %q, want %q", key, got, role)
		}
	}
}
