package instacart

import (
	"context"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// A code is sent to Connect once: a second use (a client's retry, a replay)
// is refused here, without asking Connect, naming the field.
func TestAuthorizationCodeIsSingleUse(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
	e.mustOK(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	before := e.storageSnapshot()
	resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	expectError(t, resp, err, "code: this authorization code was already sent")
	if got := e.fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("Connect saw the code %d times, want once", got)
	}
	if !reflect.DeepEqual(before, e.storageSnapshot()) {
		t.Error("a refused code changed storage")
	}
	// A code Connect itself refuses (never issued) is still Connect's to judge.
	resp, err = e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": "never-issued"})
	expectError(t, resp, err, "invalid_grant")
	// Records of sent codes are pruned once no code could still be valid.
	e.advance(codeRecordTTL)
	if err := e.b.pruneCodes(context.Background(), e.storage); err != nil {
		t.Fatal(err)
	}
	for k := range e.storageSnapshot() {
		if strings.HasPrefix(k, codeStoragePrefix) {
			t.Errorf("code record %s outlived its TTL", k)
		}
	}
}

// An authorization code is single-use: once a request carrying it reached
// Connect and the answer was lost, it is not sent again, and the caller is
// told to get a new code.
func TestAuthorizationCodeIsNeverSentTwice(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  connectfake.Fault
		status int
	}{
		{"reset after Connect processed it", connectfake.Fault{AfterHandling: true, Reset: true}, http.StatusBadGateway},
		{"500 after Connect processed it", connectfake.Fault{AfterHandling: true, Status: 500}, http.StatusBadGateway},
		{"no answer in time", connectfake.Fault{AfterHandling: true, Hang: true}, http.StatusGatewayTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			setupRoles(e)
			e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "1s", "max_retries": 3})
			e.fake.ResetCounters()
			code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
			e.fake.InjectFaults(connectfake.PathToken, tc.fault)

			_, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
			if got := codedStatus(err); got != tc.status {
				t.Fatalf("status %d (%v), want %d", got, err, tc.status)
			}
			if !strings.Contains(err.Error(), "new code") {
				t.Errorf("error does not tell the caller to get a new code: %v", err)
			}
			if got := e.fake.Requests(connectfake.PathToken); got != 1 {
				t.Errorf("the code was sent %d times, want once", got)
			}
			// A client retrying the failed write (the Vault CLI retries 5xx
			// answers by itself) gets a 400; Connect never sees it again.
			resp, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
			expectError(t, resp, err, "already sent")
			if got := e.fake.Requests(connectfake.PathToken); got != 1 {
				t.Errorf("a retry sent the code again (%d requests)", got)
			}
		})
	}

	t.Run("a code Connect turned away (429/503 to the end) may be sent again", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 1})
		code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 429, RetryAfter: "0"})
		_, err := e.do(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
		if codedStatus(err) != http.StatusBadGateway || strings.Contains(err.Error(), "new code") {
			t.Fatalf("err = %v, want a plain 502 (the code was not processed)", err)
		}
		e.mustOK(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
	})

	t.Run("429 and 503 are retried: Connect did not process them", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		code := e.fake.IssueAuthorizationCode(testClientID, redirectURI, "linked-user")
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 429, RetryAfter: "0"}, connectfake.Fault{Status: 503})
		resp := e.mustOK(logical.UpdateOperation, "creds/link", map[string]any{"code": code})
		if usersStatus(t, e.fake.URL, resp.Data["access_token"].(string)) != 200 {
			t.Error("the linking token does not work")
		}
		if got := e.fake.Requests(connectfake.PathToken); got != 3 {
			t.Errorf("token requests = %d, want 3", got)
		}
	})

	t.Run("other grants still retry", func(t *testing.T) {
		e := newTestEnv(t)
		setupRoles(e)
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{AfterHandling: true, Status: 500})
		e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
		if got := e.fake.Requests(connectfake.PathToken); got != 2 {
			t.Errorf("token requests = %d, want 2", got)
		}
	})
}
