//go:build e2e

package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAuditRecordsCodedErrorsAsErrors: a creds read that fails with a 502
// (Connect down) is audited as a failure, its response entry carrying Vault's
// "error" field as every other failed request's does. Audit consumers (and
// auditedRenewals here) tell failures from successes by that field; a raw
// response would be audited as a success whose body (the error text) is
// HMAC'd.
func TestAuditRecordsCodedErrorsAsErrors(t *testing.T) {
	t.Parallel()
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	audit := filepath.Join(t.TempDir(), "audit.log")
	v.vault(t, "audit", "enable", "file", "file_path="+audit)
	v.vault(t, "write", "instacart/config", "request_timeout=2s", "max_retries=1")
	v.vault(t, "write", "instacart/roles/shared", "grant_type=client_credentials", "scopes=connect:fulfillment")

	f.InjectFaults(t, "/v2/oauth/token", map[string]any{"status": 503, "repeat": 10})
	if _, errOut, code := v.cli(t, v.Token, "", "read", "instacart/creds/shared"); code == 0 || !strings.Contains(errOut, "Code: 502") {
		t.Fatalf("creds read with Connect down: exit %d, want a 502:\n%s", code, errOut)
	}
	read := func(e auditEntry) bool { return e.Request.Path == "instacart/creds/shared" }
	if n := auditedResponses(t, audit, read); n != 1 {
		t.Fatalf("%d audited responses for the creds read, want 1", n)
	}
	failed := func(e auditEntry) bool { return read(e) && e.Error != "" }
	if n := auditedResponses(t, audit, failed); n != 1 {
		t.Error("the failed creds read is audited without an error, as a success")
	}
}
