package instacart

import (
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// user_id refuses control characters, C1 controls and invisible overrides.
func TestUserIDRefusesInvisibleCharacters(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	for _, id := range []string{"store-1\x00", "store-\n1", "store-\u0085", "store-\u202e1", "store-\u2028"} {
		resp, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": id})
		expectError(t, resp, err, "user_id")
	}
	if e.fake.Mints() != 0 {
		t.Errorf("%d tokens minted for refused ids", e.fake.Mints())
	}
}
