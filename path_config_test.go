package instacart

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

func TestConfigWriteVerifiesRevokesAndReadsBack(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	if got := e.fake.Mints(); got != 1 {
		t.Errorf("verify minted %d tokens, want 1", got)
	}
	if got := e.fake.Revocations(); got != 1 {
		t.Errorf("the verification token was revoked %d times, want 1", got)
	}

	resp := e.mustOK(logical.ReadOperation, "config", nil)
	want := map[string]any{
		"client_id":            testClientID,
		"client_secret_set":    true,
		"base_url":             e.fake.URL,
		"request_timeout":      int64(10),
		"max_retries":          2,
		"max_concurrent_mints": defaultMaxConcurrentMints,
	}
	if !reflect.DeepEqual(resp.Data, want) {
		t.Errorf("read config = %v, want %v", resp.Data, want)
	}

	// A partial update keeps the other fields and does not re-verify
	// unchanged credentials.
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "90s"})
	resp = e.mustOK(logical.ReadOperation, "config", nil)
	if resp.Data["request_timeout"] != int64(90) || resp.Data["client_id"] != testClientID {
		t.Errorf("after partial update: %v", resp.Data)
	}
	// Reads give seconds, as the README says, and a value read back writes
	// the same duration again.
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": resp.Data["request_timeout"]})
	if got := e.mustOK(logical.ReadOperation, "config", nil).Data["request_timeout"]; got != int64(90) {
		t.Errorf("request_timeout written back as read: reads %v, want 90", got)
	}
	if got := e.fake.Mints(); got != 1 {
		t.Errorf("unchanged credentials were verified again (%d mints)", got)
	}

	e.mustOK(logical.DeleteOperation, "config", nil)
	if resp, err := e.do(logical.ReadOperation, "config", nil); err != nil || resp != nil {
		t.Errorf("read after delete: %v %v", resp, err)
	}
}

func TestConfigWriteRefusesInvalidFieldsByName(t *testing.T) {
	base := func(e *testEnv) map[string]any {
		return map[string]any{"client_id": testClientID, "client_secret": testSecret, "base_url": e.fake.URL}
	}
	tests := []struct {
		name  string
		mod   map[string]any
		drop  string
		field string
	}{
		{name: "missing client_id", drop: "client_id", field: "client_id"},
		{name: "blank client_id", mod: map[string]any{"client_id": "  "}, field: "client_id"},
		{name: "client_id with newline", mod: map[string]any{"client_id": "a\nb"}, field: "client_id"},
		{name: "missing client_secret", drop: "client_secret", field: "client_secret"},
		{name: "http non-loopback", mod: map[string]any{"base_url": "http://connect.instacart.com"}, field: "base_url"},
		{name: "ftp", mod: map[string]any{"base_url": "ftp://127.0.0.1"}, field: "base_url"},
		{name: "relative", mod: map[string]any{"base_url": "connect.instacart.com"}, field: "base_url"},
		{name: "userinfo", mod: map[string]any{"base_url": "https://user:pw@connect.instacart.com"}, field: "base_url"},
		{name: "query", mod: map[string]any{"base_url": "https://connect.instacart.com/?client_id=x"}, field: "base_url"},
		{name: "zero timeout", mod: map[string]any{"request_timeout": 0}, field: "request_timeout"},
		{name: "negative timeout", mod: map[string]any{"request_timeout": "-5s"}, field: "request_timeout"},
		{name: "huge timeout", mod: map[string]any{"request_timeout": "1h"}, field: "request_timeout"},
		{name: "bad duration", mod: map[string]any{"request_timeout": "soon"}, field: "request_timeout"},
		{name: "negative retries", mod: map[string]any{"max_retries": -1}, field: "max_retries"},
		{name: "too many retries", mod: map[string]any{"max_retries": 11}, field: "max_retries"},
		{name: "zero mints", mod: map[string]any{"max_concurrent_mints": 0}, field: "max_concurrent_mints"},
		{name: "too many mints", mod: map[string]any{"max_concurrent_mints": 5000}, field: "max_concurrent_mints"},
		{name: "wrong secret (verify)", mod: map[string]any{"client_secret": "wrong-secret-value"}, field: "invalid_client"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			data := base(e)
			for k, v := range tc.mod {
				data[k] = v
			}
			delete(data, tc.drop)
			before := e.storageSnapshot()
			resp, err := e.do(logical.UpdateOperation, "config", data)
			expectError(t, resp, err, tc.field)
			if after := e.storageSnapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("storage changed by a rejected write: %v", slices.Sorted(maps.Keys(after)))
			}
		})
	}
}

func TestConfigVerifyCanBeSkipped(t *testing.T) {
	e := newTestEnv(t)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{
		"client_id": testClientID, "client_secret": "wrong-secret-value", "base_url": e.fake.URL, "verify": false,
	})
	if e.fake.Requests(connectfake.PathToken) != 0 {
		t.Error("verify=false still called Connect")
	}
	// The bad secret now surfaces at creds time, as a 400 naming Instacart's code.
	e.mustOK(logical.UpdateOperation, "roles/cc", map[string]any{"grant_type": "client_credentials"})
	resp, err := e.do(logical.ReadOperation, "creds/cc", nil)
	expectError(t, resp, err, "invalid_client")
	if got := e.fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("invalid_client was retried: %d requests", got)
	}
}

func TestConfigNeverReturnsSecret(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	resp := e.mustOK(logical.ReadOperation, "config", nil)
	b, _ := json.Marshal(resp)
	if strings.Contains(string(b), testSecret) || resp.Data["client_secret"] != nil {
		t.Error("config read returned the client secret")
	}
}

func TestRejectedCredentialsStopHammeringConnect(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	e.fake.RemoveClient(testClientID) // Instacart disabled the application
	for range 5 {
		resp, err := e.do(logical.ReadOperation, "creds/cc-excl", nil)
		expectError(t, resp, err, "invalid_client")
	}
	if got := e.fake.Requests(connectfake.PathToken); got != 1 {
		t.Errorf("5 reads with refused credentials reached Connect %d times, want 1", got)
	}
	// New credentials end the hold at once.
	e.fake.AddClient("test-client-2", "fake-second-secret-for-tests-98765")
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": "test-client-2", "client_secret": "fake-second-secret-for-tests-98765"})
	e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
}

// recordingListener is a loopback HTTP server that records every request
// body it receives and answers like Connect would to unknown credentials.
func recordingListener(t *testing.T) (url string, bodies func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, string(b))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"unknown client"}`)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}
