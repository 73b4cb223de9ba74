package instacart

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// invalidGrantEchoing is a 400 invalid_grant whose error_description repeats
// what the request carried.
func invalidGrantEchoing(what string) connectfake.Fault {
	body, _ := json.Marshal(map[string]string{"error": "invalid_grant", "error_description": "echoed-by-connect: the grant for " + what + " was refused"})
	return connectfake.Fault{Status: http.StatusBadRequest, Body: string(body)}
}

// Connect's error_description may repeat the user id or the code the request
// carried; errors and warnings are not HMAC'd in Vault's audit log, so
// neither may quote it: the caller gets Instacart's error code and advice.
func TestConnectDescriptionNeverReachesTheCaller(t *testing.T) {
	const user = "store-qv9z-echo"
	e := newTestEnv(t)
	setupRoles(e)
	check := func(t *testing.T, what string, resp *logical.Response, err error, secrets ...string) {
		t.Helper()
		text := errText(resp, err)
		if resp != nil {
			text += "\n" + strings.Join(resp.Warnings, "\n")
		}
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s quotes what the request carried: %q", what, strings.ReplaceAll(text, s, "<redacted>"))
			}
		}
		if strings.Contains(text, "echoed-by-connect") {
			t.Errorf("%s quotes Connect's description", what)
		}
	}

	t.Run("assertion", func(t *testing.T) {
		e.fake.InjectFaults(connectfake.PathToken, invalidGrantEchoing(user))
		resp, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": user})
		if !strings.Contains(errText(resp, err), "invalid_grant") {
			t.Fatalf("resp %v, err %v: want an error naming invalid_grant", resp, err)
		}
		check(t, "the error", resp, err, user)
	})

	t.Run("authorization code", func(t *testing.T) {
		code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
		e.fake.InjectFaults(connectfake.PathToken, invalidGrantEchoing(code))
		resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
		if !strings.Contains(errText(resp, err), "invalid_grant") {
			t.Fatalf("resp %v, err %v: want an error naming invalid_grant", resp, err)
		}
		check(t, "the error", resp, err, code)
	})

	t.Run("stale token served with a warning", func(t *testing.T) {
		e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": user})
		e.advance(23*time.Hour + 30*time.Minute) // past the refresh point, still leasable
		e.fake.InjectFaults(connectfake.PathToken, invalidGrantEchoing(user), invalidGrantEchoing(user))
		resp, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": user})
		if err != nil || resp == nil || resp.IsError() || len(resp.Warnings) == 0 {
			t.Fatalf("resp %v, err %v: want the current token with a warning", resp, err)
		}
		check(t, "the warning", resp, err, user)
	})
}
