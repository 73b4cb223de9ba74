package instacart

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// userIDMarker is in every user id these tests submit and in no message the
// engine writes, so finding it in one means a user id was echoed.
const userIDMarker = "zq7x"

// Vault's audit log HMACs request and response data but not error text or
// warnings: a submitted user id, permitted or not, valid or not, never
// appears in either (nor in the log).
func TestUserIDNeverEchoed(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	for _, tc := range []struct {
		name, path, id string
	}{
		{"not permitted", "creds/shoppers", "vip-" + userIDMarker + "-8841"},
		{"not permitted, long", "creds/shoppers", "vip-" + userIDMarker + strings.Repeat("-8841", 40)},
		{"invalid: control character", "creds/shoppers", "store-" + userIDMarker + "\n"},
		{"invalid: invisible character", "creds/shoppers", "store-" + userIDMarker + "\u200b"},
		{"invalid: bad UTF-8", "creds/shoppers", "store-" + userIDMarker + "\xff"},
		{"too long", "creds/shoppers", "store-" + userIDMarker + strings.Repeat("-8841", 60)},
		{"not the fixed user", "creds/shopper", "other-" + userIDMarker},
		{"not an assertion role", "creds/cc", "store-" + userIDMarker},
		{"not an assertion role (code)", "creds/link", "store-" + userIDMarker},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			resp, err := e.do(logical.UpdateOperation, tc.path, map[string]any{"user_id": tc.id})
			expectError(t, resp, err, "user_id")
			if resp == nil {
				return
			}
			if msg := resp.Error().Error(); strings.Contains(msg, userIDMarker) {
				t.Errorf("error text echoes the user id: %q", msg)
			}
			if len(resp.Warnings) != 0 {
				t.Errorf("warnings on a refused request: %q", resp.Warnings)
			}
		})
	}
	e.t = t

	// Role writes: a refused fixed user_id or allowed_user_ids pattern is not
	// echoed either.
	for _, data := range []map[string]any{
		{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "user_id": userIDMarker + "\u2060"},
		{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "user_id": userIDMarker + strings.Repeat("x", maxUserIDLength)},
		{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": userIDMarker + "\ufeff*"},
		{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "user_id": userIDMarker, "allowed_user_ids": userIDMarker + "*"},
		{"grant_type": "client_credentials", "user_id": userIDMarker},
		{"grant_type": "client_credentials", "allowed_user_ids": userIDMarker + "*"},
	} {
		resp, err := e.do(logical.UpdateOperation, "roles/echo", data)
		if err != nil || resp == nil || !resp.IsError() {
			t.Fatalf("role write %v accepted: %v %v", data, resp, err)
		}
		if msg := resp.Error().Error(); strings.Contains(msg, userIDMarker) || !namesAField(msg) {
			t.Errorf("role write error %q echoes the user id or names no field", msg)
		}
	}

	if e.fake.Mints() != 0 {
		t.Errorf("%d tokens minted for refused requests", e.fake.Mints())
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, said := range append(e.seen, e.logs.String()) {
		if strings.Contains(said, userIDMarker) {
			t.Errorf("a response, error or log line holds a submitted user id: %q", truncateForMessage(said))
		}
	}
}
