package instacart

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// errStorageDown is what a storage backend that lost its connection answers.
var errStorageDown = errors.New("storage backend unavailable")

// faultyStorage fails the storage calls a test picks, as a storage backend
// that lost its connection does; every other call goes through.
type faultyStorage struct {
	logical.Storage

	mu   sync.Mutex
	fail func(op, key string) error // op: get, put, delete, list
}

// faultStorage swaps e's storage for a faultyStorage over it.
func faultStorage(e *testEnv) *faultyStorage {
	f := &faultyStorage{Storage: e.storage}
	e.storage = f
	return f
}

// failing makes the calls of op on keys starting with prefix fail.
func (f *faultyStorage) failing(op, prefix string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = func(o, key string) error {
		if o == op && strings.HasPrefix(key, prefix) {
			return errStorageDown
		}
		return nil
	}
}

func (f *faultyStorage) check(op, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail == nil {
		return nil
	}
	return f.fail(op, key)
}

func (f *faultyStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if err := f.check("get", key); err != nil {
		return nil, err
	}
	return f.Storage.Get(ctx, key)
}

func (f *faultyStorage) Put(ctx context.Context, entry *logical.StorageEntry) error {
	if err := f.check("put", entry.Key); err != nil {
		return err
	}
	return f.Storage.Put(ctx, entry)
}

func (f *faultyStorage) Delete(ctx context.Context, key string) error {
	if err := f.check("delete", key); err != nil {
		return err
	}
	return f.Storage.Delete(ctx, key)
}

func (f *faultyStorage) List(ctx context.Context, prefix string) ([]string, error) {
	if err := f.check("list", prefix); err != nil {
		return nil, err
	}
	return f.Storage.List(ctx, prefix)
}

// want503 fails the test unless err is a coded 503.
func want503(t *testing.T, what string, resp *logical.Response, err error) {
	t.Helper()
	if got := codedStatus(err); got != http.StatusServiceUnavailable {
		t.Errorf("%s with storage failing: resp %v, err %v (status %d), want a coded 503", what, resp, err, got)
	}
}

// A creds read whose role is no longer in memory (another node changed it)
// and cannot be read from storage answers a coded 503, as every other
// storage failure of a read does, not an uncoded 500.
func TestCredsReadRoleStorageFailureIs503(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	f := faultStorage(e)
	minted := len(e.fake.Tokens())
	for _, role := range []string{"cc", "cc-excl"} {
		e.b.invalidate(context.Background(), roleStoragePrefix+role)
		f.failing("get", roleStoragePrefix+role)
		resp, err := e.do(logical.ReadOperation, "creds/"+role, nil)
		want503(t, "creds/"+role, resp, err)
	}
	if n := len(e.fake.Tokens()) - minted; n != 0 {
		t.Errorf("%d tokens minted for roles that could not be read", n)
	}
}

// Every handler of roles/, config and tidy answers a storage failure with a
// coded 503 and writes nothing half-way. (An existence check's error cannot
// be coded: Vault turns it into a 500 whatever it says.)
func TestHandlersStorageFailureIs503(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	f := faultStorage(e)
	before := e.storageSnapshot()
	role := map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment"}
	for _, c := range []struct {
		name, op, prefix string
		req              logical.Operation
		path             string
		data             map[string]any
	}{
		{"role list", "list", roleStoragePrefix, logical.ListOperation, "roles/", nil},
		{"role read", "get", roleStoragePrefix + "cc", logical.ReadOperation, "roles/cc", nil},
		{"role create", "put", roleStoragePrefix + "new", logical.CreateOperation, "roles/new", role},
		{"role update", "put", roleStoragePrefix + "cc", logical.UpdateOperation, "roles/cc", map[string]any{"ttl": "1h"}},
		{"role update, role read", "get", roleStoragePrefix + "cc", logical.UpdateOperation, "roles/cc", map[string]any{"ttl": "1h"}},
		{"role delete", "delete", roleStoragePrefix + "cc", logical.DeleteOperation, "roles/cc", nil},
		{"role delete, role read", "get", roleStoragePrefix + "cc", logical.DeleteOperation, "roles/cc", nil},
		{"config read", "get", configStoragePath, logical.ReadOperation, "config", nil},
		{"config write", "put", configStoragePath, logical.UpdateOperation, "config", map[string]any{"max_retries": 1}},
		{"config write, config read", "get", configStoragePath, logical.UpdateOperation, "config", map[string]any{"max_retries": 1}},
		{"config delete", "put", configStoragePath, logical.DeleteOperation, "config", nil},
		{"config delete, config read", "get", configStoragePath, logical.DeleteOperation, "config", nil},
		{"tidy", "list", "", logical.UpdateOperation, "tidy", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.b.invalidate(context.Background(), roleStoragePrefix+"cc") // make the handler read it
			f.failing(c.op, c.prefix)
			defer f.failing("", "")
			req := &logical.Request{Operation: c.req, Path: c.path, Data: c.data, Storage: e.storage}
			resp, err := e.b.HandleRequest(context.Background(), req)
			e.record(resp, err)
			want503(t, c.name, resp, err)
		})
	}
	if after := e.storageSnapshot(); !maps.Equal(before, after) {
		t.Errorf("requests that failed on storage changed it:\nbefore %v\nafter  %v", keysOf(before), keysOf(after))
	}
}

func keysOf(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
