package instacart

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// Vault answers a lease revocation "Success" even when Connect is down and
// the token was only queued: Vault drops a revoke's response, warnings
// included (its expiration manager keeps only the error). So the queued
// state shows at once where it can: the pending-revocations gauge at the
// next scrape, and a log line naming the role and why.
func TestLeaseRevocationQueuedShowsAtOnce(t *testing.T) {
	e := newTestEnv(t)
	setupRoles(e)
	_ = e.scrape() // gauges built before the revocation: it must move them itself
	resp := e.mustOK(logical.ReadOperation, "creds/cc-excl", nil)
	faults := make([]connectfake.Fault, 3)
	for i := range faults {
		faults[i] = connectfake.Fault{Status: 503}
	}
	e.fake.InjectFaults(connectfake.PathRevoke, faults...)
	if err := revoke(e, resp.Secret); err != nil {
		t.Fatalf("revoke with Connect down: %v; it should be queued", err)
	}
	if got := e.scrape().get(metricPending, roleOnly("cc-excl")); got != 1 {
		t.Errorf("%s{role=cc-excl} right after the revocation: %v, want 1", metricPending, got)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "queued") || !strings.Contains(logs, "its lease was revoked") || !strings.Contains(logs, "cc-excl") {
		t.Errorf("no log line saying the revoked lease's token is queued:\n%s", logs)
	}
}
