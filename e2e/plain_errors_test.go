//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestErrorsReadAlike: in a real Vault, a 502 (Connect down) reads as a 400
// does, its message alone under "Code: 502. Errors:", not wrapped in Vault's
// "1 error occurred:" list.
func TestErrorsReadAlike(t *testing.T) {
	t.Parallel()
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/config", "request_timeout=2s", "max_retries=1")
	v.vault(t, "write", "instacart/roles/shared", "grant_type=client_credentials", "scopes=connect:fulfillment")

	f.InjectFaults(t, "/v2/oauth/token", map[string]any{"status": 503, "repeat": 10})
	_, errOut, code := v.cli(t, v.Token, "", "read", "instacart/creds/shared")
	if code == 0 || !strings.Contains(errOut, "Code: 502. Errors:\n\n* Instacart Connect is unavailable, try again later") {
		t.Errorf("creds read with Connect down: exit %d, want a 502 with its message alone:\n%s", code, errOut)
	}
	if strings.Contains(errOut, "error occurred") {
		t.Errorf("the 502 is wrapped in Vault's error list:\n%s", errOut)
	}
	// A 400 for comparison: the same shape.
	_, errOut, code = v.cli(t, v.Token, "", "write", "instacart/roles/bad", "grant_type=nonsense")
	if code == 0 || !strings.Contains(errOut, "Code: 400. Errors:\n\n* ") || strings.Contains(errOut, "error occurred") {
		t.Errorf("role write with a bad grant: exit %d, want a plain 400:\n%s", code, errOut)
	}
}
