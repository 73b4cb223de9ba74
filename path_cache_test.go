package instacart

import (
	"reflect"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

func TestCacheFlushRevokesSharedTokens(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	role := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"].(string)
	u1 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}).Data["access_token"].(string)
	u2 := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-2"}).Data["access_token"].(string)

	e.mustOK(logical.DeleteOperation, "cache/shoppers", nil)
	if e.fake.TokenLive(u1) || e.fake.TokenLive(u2) {
		t.Error("flushed tokens still live at Connect")
	}
	if got := usersStatus(t, e.fake.URL, u1); got != 401 {
		t.Errorf("flushed token: Connect answered %d", got)
	}
	if !e.fake.TokenLive(role) {
		t.Error("flushing one role revoked another role's token")
	}
	fresh := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-1"}).Data["access_token"].(string)
	if fresh == u1 || !e.fake.TokenLive(fresh) {
		t.Error("the next read did not mint a fresh token")
	}
}

func TestCacheFlushKeepsTokenWhenRevokeFails(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	tok := e.mustOK(logical.ReadOperation, "creds/cc", nil).Data["access_token"]
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 500}, connectfake.Fault{Status: 500}, connectfake.Fault{Status: 500})
	before := e.storageSnapshot()
	if _, err := e.do(logical.DeleteOperation, "cache/cc", nil); err == nil {
		t.Fatal("flush succeeded though the token could not be revoked")
	}
	if !reflect.DeepEqual(before, e.storageSnapshot()) {
		t.Error("the token was dropped without being revoked; the flush could not be retried")
	}
	e.mustOK(logical.DeleteOperation, "cache/cc", nil)
	if e.fake.TokenLive(tok.(string)) {
		t.Error("token live after the retried flush")
	}
}

func TestCacheFlushValidation(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	resp, err := e.do(logical.DeleteOperation, "cache/nope", nil)
	expectError(t, resp, err, "unknown role")
	// Nothing cached: a no-op.
	e.mustOK(logical.DeleteOperation, "cache/cc", nil)
}
