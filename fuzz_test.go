package instacart

import (
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hashicorp/vault/sdk/logical"
)

// FuzzRoleWrite throws arbitrary role input at roles/<name>. Every write must
// either succeed and read back as written, or fail with a 400 naming a field
// and leave storage exactly as it was. Never a panic, never a 500.
// Seeds: f.Add below plus testdata/fuzz/FuzzRoleWrite.
func FuzzRoleWrite(f *testing.F) {
	f.Add("cc", "client_credentials", "connect:fulfillment", "", "", "", "")
	f.Add("a/b", "client_credentials", "", "", "", "", "")
	f.Add("ünï", "fulfillment_user_assertion", "connect:recommendations", "kamal", "", "", "")
	f.Add("r.1", "fulfillment_user_assertion", "connect:recommendations, ,connect:post_checkout", "", "store-*", "", "")
	f.Add("link", "authorization_code", "account_linking", "", "", "http://127.0.0.1:8080/cb", "exclusive")
	f.Add("link", "authorization_code", "account_linking", "", "", "ftp://example.com", "shared")
	f.Add(strings.Repeat("n", 10<<10), "client_credentials", strings.Repeat("s", 10<<10), "", "", "", "")
	f.Add("u", "fulfillment_user_assertion", "connect:recommendations", "a\"b\\c\nd", "", "", "")
	f.Add("g", "fulfillment_user_assertion", "connect:recommendations", "", "[", "", "")

	e := newTestEnv(f)
	f.Fuzz(func(t *testing.T, name, grant, scopes, userID, allowed, redirect, reuse string) {
		e.t = t
		data := map[string]any{"grant_type": grant}
		for k, v := range map[string]string{"scopes": scopes, "user_id": userID, "allowed_user_ids": allowed, "redirect_uri": redirect, "token_reuse": reuse} {
			if v != "" {
				data[k] = v
			}
		}
		before := e.storageSnapshot()
		resp, err := e.do(logical.UpdateOperation, "roles/"+name, data)
		if err != nil {
			t.Fatalf("internal error (would be a 500): %v", err)
		}
		if resp.IsError() {
			msg := resp.Error().Error()
			if !namesAField(msg) {
				t.Errorf("error %q names no field", msg)
			}
			if !reflect.DeepEqual(before, e.storageSnapshot()) {
				t.Errorf("rejected write changed storage")
			}
			return
		}
		got := e.mustOK(logical.ReadOperation, "roles/"+name, nil)
		if got.Data["grant_type"] != grant {
			t.Errorf("grant_type read back as %v", got.Data["grant_type"])
		}
		if grant == "fulfillment_user_assertion" && got.Data["user_id"] != userID {
			t.Errorf("user_id read back as %q, wrote %q", got.Data["user_id"], userID)
		}
		e.mustOK(logical.DeleteOperation, "roles/"+name, nil)
	})
}

// FuzzAssertionUserID mints assertion tokens for arbitrary user ids: an
// accepted id must reach Connect as valid JSON for exactly that id; a refused
// one (empty, too long, invalid UTF-8, control characters) gets a 400 naming
// user_id and changes nothing.
func FuzzAssertionUserID(f *testing.F) {
	for _, seed := range []string{"kamalsingh1234", `a"b`, `back\slash`, "new\nline", "\x00", "ünïcödé", "store-*", strings.Repeat("x", 10<<10), "\xff\xfe"} {
		f.Add(seed)
	}
	e := newTestEnv(f)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "roles/any", map[string]any{"grant_type": "fulfillment_user_assertion", "scopes": "connect:recommendations", "allowed_user_ids": "*", "token_reuse": "exclusive"})
	f.Fuzz(func(t *testing.T, userID string) {
		e.t = t
		before := e.storageSnapshot()
		resp, err := e.do(logical.UpdateOperation, "creds/any", map[string]any{"user_id": userID})
		if err != nil {
			t.Fatalf("internal error: %v", err)
		}
		if resp.IsError() {
			if valid := userID != "" && len(userID) <= maxUserIDLength && utf8.ValidString(userID) && !hasControl(userID); valid {
				t.Fatalf("valid user id refused: %v", resp.Error())
			}
			if !strings.Contains(resp.Error().Error(), "user_id") {
				t.Errorf("error %q does not name user_id", resp.Error())
			}
			if !reflect.DeepEqual(before, e.storageSnapshot()) {
				t.Error("storage changed")
			}
			return
		}
		info, ok := e.fake.Token(resp.Data["access_token"].(string))
		if !ok || info.UserID != userID {
			t.Errorf("Connect minted for user %q, asked for %q", info.UserID, userID)
		}
	})
}

// namesAField reports whether an error message names one of the role's fields.
func namesAField(msg string) bool {
	for field := range roleFields {
		if namesWord(msg, field) {
			return true
		}
	}
	return false
}
