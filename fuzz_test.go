package instacart

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/vault/sdk/logical"
)

// FuzzRoleWrite throws arbitrary role input at roles/<name>. Every write must
// either succeed and read back as written, with a user_id and
// allowed_user_ids patterns that pass visibleUserID, or fail with a 400
// naming a field, quoting neither the user id nor a pattern, and leave
// storage exactly as it was. Never a panic, never a 500.
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
	f.Add("z", "fulfillment_user_assertion", "connect:recommendations", "kämal\u200b", "", "", "")
	f.Add("z", "fulfillment_user_assertion", "connect:recommendations", "", "störe-\ufeff*,vip\U000e0041", "", "")
	f.Add("z", "fulfillment_user_assertion", "connect:rëcommendations", "rë", "", "", "")

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
		if name == "" {
			// "roles/" is the list path: Vault answers a write there with
			// 405, and nothing may be stored.
			if !errors.Is(err, logical.ErrUnsupportedOperation) {
				t.Fatalf("write to roles/ answered %v, %v; want unsupported operation", resp, err)
			}
			if !reflect.DeepEqual(before, e.storageSnapshot()) {
				t.Errorf("write to roles/ changed storage")
			}
			return
		}
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
			others := []string{name, grant, scopes, redirect, reuse}
			for _, v := range append(strings.Split(allowed, ","), userID) {
				if echoes(msg, strings.TrimSpace(v), others) {
					t.Errorf("error %q quotes a user id or allowed_user_ids pattern", msg)
				}
			}
			return
		}
		got := e.mustOK(logical.ReadOperation, "roles/"+name, nil)
		if got.Data["grant_type"] != grant {
			t.Errorf("grant_type read back as %v", got.Data["grant_type"])
		}
		if grant == "fulfillment_user_assertion" {
			if got.Data["user_id"] != userID {
				t.Errorf("user_id read back as %q, wrote %q", got.Data["user_id"], userID)
			}
			if userID != "" && !visibleUserID(userID) {
				t.Errorf("user_id %q accepted", userID)
			}
			for _, g := range got.Data["allowed_user_ids"].([]string) {
				if !visibleUserID(g) {
					t.Errorf("allowed_user_ids pattern %q accepted", g)
				}
			}
		}
		e.mustOK(logical.DeleteOperation, "roles/"+name, nil)
	})
}

// FuzzAssertionUserID mints assertion tokens for arbitrary user ids: an
// accepted id must reach Connect as valid JSON for exactly that id; a refused
// one (empty, too long, invalid UTF-8, control or invisible characters: see
// visibleUserID) gets a 400 naming user_id, not quoting it, and changes
// nothing.
func FuzzAssertionUserID(f *testing.F) {
	for _, seed := range []string{"kamalsingh1234", `a"b`, `back\slash`, "new\nline", "\x00", "ünïcödé", "store-*", strings.Repeat("x", 10<<10), "\xff\xfe", "zero\u200bwidth", "\ufeffbom", "tag\U000e0041", "soft\u00adhyphen", "a\u2064b"} {
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
			if visibleUserID(userID) {
				t.Fatalf("valid user id refused: %v", resp.Error())
			}
			msg := resp.Error().Error()
			if !namesWord(msg, "user_id") {
				t.Errorf("error %q does not name user_id", msg)
			}
			// The messages of creds/ about a user id are fixed text: short,
			// valid UTF-8, without control or invisible characters, so no
			// refused id is part of one unless it was quoted.
			if userID != "" && (strings.Contains(msg, userID) || echoes(msg, userID, nil)) {
				t.Errorf("error %q quotes the user id", msg)
			}
			if !reflect.DeepEqual(before, e.storageSnapshot()) {
				t.Error("storage changed")
			}
			return
		}
		if !visibleUserID(userID) {
			t.Fatalf("user id %q accepted", userID)
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

// visibleUserID is the fuzz oracle's own statement of the rule for user ids
// and allowed_user_ids patterns: 1 to maxUserIDLength bytes of valid UTF-8
// with no control characters (C0, DEL, C1), line or paragraph separators,
// format characters (Unicode category Cf: zero-width characters, direction
// marks, overrides and isolates, the byte order mark, invisible operators)
// or tag characters (U+E0000–U+E007F).
func visibleUserID(id string) bool {
	if id == "" || len(id) > maxUserIDLength || !utf8.ValidString(id) {
		return false
	}
	for _, r := range id {
		if unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) || (r >= 0xe0000 && r <= 0xe007f) {
			return false
		}
	}
	return true
}

// echoes reports whether msg quotes v as a message would (as is, %q-escaped,
// or cut short by truncateForMessage) where none of the other inputs, which
// messages may quote, explains it. Only forms holding a backslash or a
// non-ASCII character are looked for: every fixed message text is ASCII (bar
// the ellipsis) without backslashes, so such a form in msg came from an input.
func echoes(msg, v string, others []string) bool {
	if v == "" {
		return false
	}
	for _, f := range messageForms(v) {
		marked := strings.ContainsFunc(f, func(r rune) bool { return r == '\\' || (r > unicode.MaxASCII && r != '…') })
		if !marked || !strings.Contains(msg, f) {
			continue
		}
		if !utf8.ValidString(f) && utf8.ValidString(msg) {
			continue // a stray byte of f matched inside one of msg's characters ("…" holds 0x80)
		}
		explained := false
		for _, o := range others {
			for _, part := range append(strings.Split(o, ","), o) {
				for _, of := range messageForms(strings.TrimSpace(part)) {
					explained = explained || strings.Contains(of, f)
				}
			}
		}
		if !explained {
			return true
		}
	}
	return false
}

// echoes judges a byte that is not UTF-8 by itself, as a fuzzed user id may
// be, quoted only by a message that is not valid UTF-8 either: a valid
// message that holds the byte inside one of its characters (the "…" of a
// truncated value holds 0x80) does not quote it (FuzzRoleWrite's find, until
// now held only by its corpus seed testdata/fuzz/FuzzRoleWrite/invalid-byte-inside-ellipsis).
func TestEchoesSeesNoStrayByteInsideACharacter(t *testing.T) {
	e := newTestEnv(t)
	grant := strings.Repeat("0", 65) // quoted truncated: "0…0…"
	resp, err := e.do(logical.UpdateOperation, "roles/r", map[string]any{"grant_type": grant, "user_id": "\x80"})
	if err != nil || !resp.IsError() {
		t.Fatalf("got %v, %v; want a 400", resp, err)
	}
	msg := resp.Error().Error()
	if !strings.Contains(msg, "…") || !strings.Contains(msg, "\x80") {
		t.Fatalf("message %q: want one that holds byte 0x80 inside a truncated value's \"…\" (the case under test)", msg)
	}
	if echoes(msg, "\x80", []string{"r", grant}) {
		t.Errorf("echoes took the 0x80 inside %q's \"…\" for the user id \"\\x80\"", msg)
	}
	if !echoes("user_id \x80 is not allowed", "\x80", nil) {
		t.Error("echoes missed the byte quoted by a message that is not UTF-8 either")
	}
}

// messageForms are the ways a message may quote s.
func messageForms(s string) []string {
	cut := strings.TrimSuffix(truncateForMessage(s), "…")
	q, qc := strconv.Quote(s), strconv.Quote(cut)
	return []string{s, q[1 : len(q)-1], cut, qc[1 : len(qc)-1]}
}
