//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAuditRecordsCodedErrorsAsErrors: a creds read that fails with a 502
// (Connect down) is audited as a failure, its response entry carrying Vault's
// "error" field as every other failed request's does. Audit consumers (and
// auditedRenewals here) tell failures from successes by that field; a raw
// response is audited as a success whose body (the error text) and even its
// status are HMAC'd.
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

	file, err := os.Open(audit)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	found := false
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e struct {
			Type    string `json:"type"`
			Error   string `json:"error"`
			Request struct {
				Path string `json:"path"`
			} `json:"request"`
			Response struct {
				Data map[string]any `json:"data"`
			} `json:"response"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Type != "response" || e.Request.Path != "instacart/creds/shared" {
			continue
		}
		found = true
		if e.Error == "" {
			t.Errorf("the failed creds read is audited without an error, as a success; response data keys: %v", keys(e.Response.Data))
		}
	}
	if !found {
		t.Fatal("no audited response for the creds read")
	}
}

// keys lists m's entries, values cut short, for a failure message.
func keys(m map[string]any) []string {
	var out []string
	for k, v := range m {
		s := fmt.Sprint(v)
		if len(s) > 24 {
			s = s[:24] + "..."
		}
		out = append(out, k+"="+s)
	}
	return out
}
