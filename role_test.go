package instacart

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// refusedUserIDCharacters are characters no user id or allowed_user_ids
// pattern may hold: control characters, line separators and direction
// overrides (hasControl), and invisible format characters (hasInvisible).
var refusedUserIDCharacters = []struct {
	name string
	r    rune
}{
	{"NUL", 0x00},
	{"newline", '\n'},
	{"DEL", 0x7f},
	{"C1 NEL", 0x85},
	{"line separator", 0x2028},
	{"paragraph separator", 0x2029},
	{"right-to-left override", 0x202e},
	{"left-to-right isolate", 0x2066},
	{"zero width space", 0x200b},
	{"zero width non-joiner", 0x200c},
	{"zero width joiner", 0x200d},
	{"left-to-right mark", 0x200e},
	{"right-to-left mark", 0x200f},
	{"Arabic letter mark", 0x061c},
	{"byte order mark", 0xfeff},
	{"word joiner", 0x2060},
	{"function application", 0x2061},
	{"invisible times", 0x2062},
	{"invisible separator", 0x2063},
	{"invisible plus", 0x2064},
	{"tag block start (unassigned)", 0xe0000},
	{"language tag", 0xe0001},
	{"unassigned tag", 0xe0002},
	{"tag space", 0xe0020},
	{"tag latin capital A", 0xe0041},
	{"cancel tag", 0xe007f},
	{"soft hyphen (Cf)", 0x00ad},
	{"Mongolian vowel separator (Cf)", 0x180e},
	{"interlinear annotation anchor (Cf)", 0xfff9},
}

// Printable ids, scripts and emoji included, are still accepted.
var acceptedUserIDs = []string{"store-42", "kamalsingh1234", "ünïcödé", "store-東京", "store-😀", "store-a b", `a"b\c`}

// user_id given to creds/ refuses every control and invisible character class.
func TestUserIDRefusesInvisibleCharacters(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	for _, tc := range refusedUserIDCharacters {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			for _, id := range []string{fmt.Sprintf("store-1%c2", tc.r), fmt.Sprintf("store-%c", tc.r), fmt.Sprintf("%cstore-1", tc.r)} {
				before := e.storageSnapshot()
				resp, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": id})
				expectError(t, resp, err, "user_id")
				if !reflect.DeepEqual(before, e.storageSnapshot()) {
					t.Error("a refused user id changed storage")
				}
			}
		})
	}
	e.t = t
	if e.fake.Mints() != 0 {
		t.Errorf("%d tokens minted for refused ids", e.fake.Mints())
	}
	for _, id := range acceptedUserIDs {
		if p := validUserID(id); p != "" {
			t.Errorf("validUserID(%q) = %q, want it accepted", id, p)
		}
	}
	e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-東京"})
}

// A role's fixed user_id and its allowed_user_ids patterns are held to the
// same rule; a refused write names the field and stores nothing, for a new
// role and for an update of an existing one. (The characters sit inside the
// patterns: Vault trims white space, newlines included, around each entry of
// a comma-separated list before the engine sees it.)
func TestRoleUserIDFieldsRefuseInvisibleCharacters(t *testing.T) {
	e := newTestEnv(t)
	existing := map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": "store-*"}
	e.mustOK(logical.UpdateOperation, "roles/existing", existing)
	for _, tc := range refusedUserIDCharacters {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			for _, w := range []struct {
				role, field string
				data        map[string]any
			}{
				{"fixed", "user_id", map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "user_id": fmt.Sprintf("kamal%c", tc.r)}},
				{"globs", "allowed_user_ids", map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": fmt.Sprintf("store-%c*", tc.r)}},
				{"globs", "allowed_user_ids", map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": []string{"vip", fmt.Sprintf("v%c*", tc.r)}}},
				{"existing", "allowed_user_ids", map[string]any{"allowed_user_ids": []string{"store-*", fmt.Sprintf("v%cip", tc.r)}}},
			} {
				before := e.storageSnapshot()
				resp, err := e.do(logical.UpdateOperation, "roles/"+w.role, w.data)
				expectError(t, resp, err, w.field)
				if !reflect.DeepEqual(before, e.storageSnapshot()) {
					t.Errorf("roles/%s: a refused write changed storage", w.role)
				}
				if w.role != "existing" {
					if resp, err := e.do(logical.ReadOperation, "roles/"+w.role, nil); err != nil || resp != nil {
						t.Errorf("roles/%s exists after a refused write: %v %v", w.role, resp, err)
					}
				}
			}
		})
	}
	e.t = t
	got := e.mustOK(logical.ReadOperation, "roles/existing", nil)
	if !reflect.DeepEqual(got.Data["allowed_user_ids"], []string{"store-*"}) {
		t.Errorf("allowed_user_ids of the existing role = %v after refused updates", got.Data["allowed_user_ids"])
	}
}

// allowed_user_ids patterns: globs are accepted; an empty or too-long pattern
// is refused, naming the field and the pattern's position.
func TestRoleAllowedUserIDPatterns(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	for _, globs := range [][]string{{"*"}, {"store-*"}, {"*-vip"}, {"a*b*c", "vip"}, acceptedUserIDs} {
		e.mustOK(logical.UpdateOperation, "roles/ok", map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": globs})
		got := e.mustOK(logical.ReadOperation, "roles/ok", nil)
		if !reflect.DeepEqual(got.Data["allowed_user_ids"], globs) {
			t.Errorf("allowed_user_ids read back as %v, wrote %v", got.Data["allowed_user_ids"], globs)
		}
	}
	e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-42"})

	for _, tc := range []struct {
		name   string
		globs  []string
		detail string
	}{
		{"empty pattern", []string{"vip", ""}, "pattern 2 of 2"},
		{"too long", []string{strings.Repeat("x", maxUserIDLength+1)}, "pattern 1 of 1"},
		{"invalid UTF-8", []string{"a", "b", "\xff*"}, "pattern 3 of 3"},
	} {
		before := e.storageSnapshot()
		resp, err := e.do(logical.UpdateOperation, "roles/bad", map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": tc.globs})
		expectError(t, resp, err, "allowed_user_ids")
		if resp != nil && !strings.Contains(resp.Error().Error(), tc.detail) {
			t.Errorf("%s: error %q does not say %q", tc.name, resp.Error(), tc.detail)
		}
		if !reflect.DeepEqual(before, e.storageSnapshot()) {
			t.Errorf("%s: a refused write changed storage", tc.name)
		}
	}
}
