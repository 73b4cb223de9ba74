package instacart

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// A deadline on a Connect call is a 504, as the Errors table promises.
func TestConnectDeadlineIs504(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "1s", "max_retries": 0})
	for _, role := range []string{"cc", "cc-excl"} {
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true})
		_, err := e.do(logical.ReadOperation, "creds/"+role, nil)
		if got := codedStatus(err); got != http.StatusGatewayTimeout {
			t.Errorf("%s: status %d (%v), want 504", role, got, err)
		}
	}
}

// A base_url that cannot be reached (no such host, or nothing listening) is
// blamed on base_url, not on Connect being down: both the verify of a config
// write and a creds read name the field.
func TestUnreachableBaseURLNamesIt(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	refused := closed.URL // loopback http is allowed; nothing listens once closed
	closed.Close()
	for name, url := range map[string]string{"dns": "https://no-such-host.invalid", "refused": refused} {
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t)
			cfg := map[string]any{"client_id": testClientID, "client_secret": testSecret, "base_url": url, "max_retries": 0}
			resp, err := e.do(logical.UpdateOperation, "config", cfg)
			msg := errText(resp, err)
			if !strings.Contains(msg, "base_url cannot be reached") || strings.Contains(msg, "try again later") {
				t.Errorf("verify: %q, want it to say base_url cannot be reached", msg)
			}
			if name == "dns" && !strings.Contains(msg, `no such host "no-such-host.invalid"`) {
				t.Errorf("verify: %q, want the host named", msg)
			}

			cfg["verify"] = false
			e.mustOK(logical.UpdateOperation, "config", cfg)
			for role, data := range map[string]map[string]any{
				"cc":      {"grant_type": "client_credentials", "scopes": "connect:fulfillment"},
				"cc-excl": {"grant_type": "client_credentials", "scopes": "connect:fulfillment", "token_reuse": "exclusive"},
			} {
				e.mustOK(logical.UpdateOperation, "roles/"+role, data)
				_, err := e.do(logical.ReadOperation, "creds/"+role, nil)
				if got := codedStatus(err); got != http.StatusBadGateway || !strings.Contains(err.Error(), "base_url cannot be reached") {
					t.Errorf("creds/%s: %d %v, want 502 naming base_url", role, got, err)
				}
			}
		})
	}
}

// errText is the error a request answered, as a response or as an error.
func errText(resp *logical.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	if resp != nil && resp.IsError() {
		return resp.Error().Error()
	}
	return ""
}

// Warnings and errors name a user's token only by a hash of the user
// id: Vault's audit log does not HMAC them.
func TestUserIDsNeverInWarningsOrErrors(t *testing.T) {
	const marker = "qv9z"
	users := []string{"store-" + marker + "-1", "store-" + marker + "-2"}
	hashed := regexp.MustCompile(`#[0-9a-f]{6,}`)
	check := func(t *testing.T, what, msg string) {
		t.Helper()
		if strings.Contains(msg, marker) {
			t.Errorf("%s holds a user id: %q", what, msg)
		}
		if !hashed.MatchString(msg) {
			t.Errorf("%s does not name the users' tokens as #<hash>: %q", what, msg)
		}
	}
	e := newTestEnv(t)
	setupRoles(e)
	read := func() {
		for _, u := range users {
			e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": u})
		}
	}

	t.Run("revocation refused", func(t *testing.T) {
		e.t = t
		defer func() { e.t = t }()
		read()
		refusal := connectfake.Fault{Status: http.StatusForbidden, Body: `{"error":"unauthorized_client","error_description":"refused"}`}
		e.fake.InjectFaults(connectfake.PathRevoke, refusal, refusal)
		resp, err := e.do(logical.DeleteOperation, "cache/shoppers", nil)
		if err != nil || resp == nil || len(resp.Warnings) == 0 {
			t.Fatalf("flush with revocations refused: resp = %v, err = %v; want warnings", resp, err)
		}
		check(t, "the warning", strings.Join(resp.Warnings, "\n"))
		e.fake.ClearFaults()
	})

	t.Run("revocation unavailable", func(t *testing.T) {
		e.t = t
		read()
		e.fake.InjectFaults(connectfake.PathRevoke, unavailableFaults(20)...)
		_, err := e.do(logical.DeleteOperation, "cache/shoppers", nil)
		if codedStatus(err) != http.StatusBadGateway {
			t.Fatalf("flush with Connect unavailable: err = %v; want a coded 502", err)
		}
		check(t, "the error", err.Error())
		e.fake.ClearFaults()
	})
	e.t = t
}
