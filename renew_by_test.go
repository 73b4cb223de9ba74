package instacart

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func hasWarningNaming(resp *logical.Response, s string) bool {
	for _, w := range resp.Warnings {
		if strings.Contains(w, s) && strings.Contains(w, "renew") {
			return true
		}
	}
	return false
}

// TestRenewBy: config keeps an optional renew_by; from 14 days before it,
// config reads and creds responses carry a warning naming the date, and the
// metric reports it; a rotation without a new renew_by clears it.
func TestRenewBy(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	e.mustOK(logical.UpdateOperation, "roles/shared", map[string]any{"grant_type": cc})
	e.mustOK(logical.UpdateOperation, "roles/excl", map[string]any{"grant_type": cc, "token_reuse": "exclusive"})

	// Bad input: a 400 naming renew_by, nothing stored or sent.
	before := e.storageSnapshot()
	mints := e.fake.Mints()
	for _, bad := range []string{"next tuesday", "2026-13-01", "2026-06-31", "06/30/2026", "2026-06-30T25:00:00Z", "1999-12-31", strings.Repeat("9", 5000), "2026-06-30 extra"} {
		for _, extra := range []map[string]any{nil, {"client_secret": testSecret + "-other"}} {
			data := map[string]any{"renew_by": bad}
			for k, v := range extra {
				data[k] = v
			}
			resp, err := e.do(logical.UpdateOperation, "config", data)
			expectError(t, resp, err, "renew_by")
		}
	}
	if after := e.storageSnapshot(); !reflect.DeepEqual(after, before) || e.fake.Mints() != mints {
		t.Errorf("refused renew_by writes changed storage or reached Connect (%d mints)", e.fake.Mints()-mints)
	}
	if _, ok := e.mustOK(logical.ReadOperation, "config", nil).Data["renew_by"]; ok {
		t.Error("renew_by shown although never set")
	}

	now := e.b.now().UTC()
	due := now.Add(30 * 24 * time.Hour).Truncate(24 * time.Hour)
	date := due.Format(time.DateOnly)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"renew_by": date})
	if e.fake.Mints() != mints {
		t.Error("setting renew_by verified the unchanged credentials again")
	}
	cfg := e.mustOK(logical.ReadOperation, "config", nil)
	if cfg.Data["renew_by"] != date || len(cfg.Warnings) != 0 {
		t.Errorf("30 days before: renew_by %v, warnings %v", cfg.Data["renew_by"], cfg.Warnings)
	}
	if w := e.mustOK(logical.ReadOperation, "creds/shared", nil).Warnings; len(w) != 0 {
		t.Errorf("creds 30 days before renew_by warn: %v", w)
	}
	if got, ok := e.scrape().value(metricRenewBy, map[string]string{}); !ok || got != float64(due.Unix()) {
		t.Errorf("%s = %v (present %v), want %d", metricRenewBy, got, ok, due.Unix())
	}

	// Other writes keep it.
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 1})
	if got := e.mustOK(logical.ReadOperation, "config", nil).Data["renew_by"]; got != date {
		t.Errorf("after a write without renew_by: %v, want %s", got, date)
	}

	// 13 days before: config and creds (shared and exclusive) warn.
	e.advance(17 * 24 * time.Hour)
	cfg = e.mustOK(logical.ReadOperation, "config", nil)
	if !hasWarningNaming(cfg, date) {
		t.Errorf("config 13 days before renew_by: warnings %v", cfg.Warnings)
	}
	for _, role := range []string{"shared", "excl"} {
		if resp := e.mustOK(logical.ReadOperation, "creds/"+role, nil); !hasWarningNaming(resp, date) {
			t.Errorf("creds/%s 13 days before renew_by: warnings %v", role, resp.Warnings)
		}
	}
	// Past it: still warned.
	e.advance(20 * 24 * time.Hour)
	if cfg = e.mustOK(logical.ReadOperation, "config", nil); !hasWarningNaming(cfg, date) || !strings.Contains(strings.Join(cfg.Warnings, " "), "passed") {
		t.Errorf("config after renew_by: warnings %v", cfg.Warnings)
	}

	// A date-time is kept as given (in UTC).
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"renew_by": "2031-02-03T04:05:06+01:00"})
	if got := e.mustOK(logical.ReadOperation, "config", nil).Data["renew_by"]; got != "2031-02-03T03:05:06Z" {
		t.Errorf("renew_by date-time read back as %v", got)
	}

	// A rotation without renew_by clears it, and the reminder and the metric go.
	e.fake.AddClient("rotated-client", testSecret+"-rotated")
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": "rotated-client", "client_secret": testSecret + "-rotated"})
	cfg = e.mustOK(logical.ReadOperation, "config", nil)
	if _, ok := cfg.Data["renew_by"]; ok || len(cfg.Warnings) != 0 {
		t.Errorf("after a rotation without renew_by: renew_by %v, warnings %v", cfg.Data["renew_by"], cfg.Warnings)
	}
	if _, ok := e.scrape().value(metricRenewBy, map[string]string{}); ok {
		t.Errorf("%s still reported after a rotation cleared renew_by", metricRenewBy)
	}
	// A rotation with one sets the new one; an empty value clears it.
	e.fake.AddClient("rotated-again", testSecret+"-again")
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"client_id": "rotated-again", "client_secret": testSecret + "-again", "renew_by": "2032-01-15"})
	if got := e.mustOK(logical.ReadOperation, "config", nil).Data["renew_by"]; got != "2032-01-15" {
		t.Errorf("after a rotation with renew_by: %v", got)
	}
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"renew_by": ""})
	if _, ok := e.mustOK(logical.ReadOperation, "config", nil).Data["renew_by"]; ok {
		t.Error("renew_by= did not clear it")
	}
}
