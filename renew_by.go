package instacart

import (
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// Instacart rotates application credentials by cloning the app, about every
// six months, and shows a "renew by" date. config keeps it as renew_by so the
// engine can remind operators, and the metric lets an alert fire earlier.

// renewByWarningWindow is how long before renew_by config reads and creds
// responses start carrying a reminder.
const renewByWarningWindow = 14 * 24 * time.Hour

const renewByDescription = "When Instacart wants the application credentials rotated (RFC 3339 date, e.g. 2026-06-30, or date-time). From 14 days before, config reads and creds responses carry a warning. A write of new credentials without a new renew_by clears it; an empty value clears it too."

var renewByField = &framework.FieldSchema{
	Type:         framework.TypeString,
	Description:  renewByDescription,
	DisplayAttrs: &framework.DisplayAttributes{Name: "Renew by"},
}

// parseRenewBy reads an RFC 3339 full-date (midnight UTC of that day) or
// date-time.
func parseRenewBy(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		t, err = time.Parse(time.RFC3339, s)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("renew_by: %q is not an RFC 3339 date (2026-06-30) or date-time (2026-06-30T00:00:00Z)", truncateForMessage(s))
	}
	if t.Year() < 2000 {
		return time.Time{}, fmt.Errorf("renew_by: %s is not a plausible renewal date", formatRenewBy(t))
	}
	return t.UTC(), nil
}

// formatRenewBy shows a date as it was most likely written: a bare date when
// it is midnight UTC.
func formatRenewBy(t time.Time) string {
	t = t.UTC()
	if t.Equal(t.Truncate(24 * time.Hour)) {
		return t.Format(time.DateOnly)
	}
	return t.Format(time.RFC3339)
}

// renewByInput reads renew_by from a config write: given reports whether the
// write names it (an empty value clears it), problem is a 400 message.
func renewByInput(d *framework.FieldData) (at time.Time, given bool, problem string) {
	raw, ok := d.GetOk("renew_by")
	if !ok {
		return time.Time{}, false, ""
	}
	s, _ := raw.(string)
	if strings.TrimSpace(s) == "" {
		return time.Time{}, true, ""
	}
	at, err := parseRenewBy(s)
	if err != nil {
		return time.Time{}, true, err.Error()
	}
	return at, true, ""
}

// nextRenewBy is the renew_by a config write leaves: the one it gives, else,
// when it changes the credentials (a rotation), none, else the current one.
func nextRenewBy(current, given time.Time, isGiven, credsChanged bool) time.Time {
	switch {
	case isGiven:
		return given
	case credsChanged:
		return time.Time{}
	}
	return current
}

// renewByWarning is the reminder for cfg at now, or "" outside the window.
func renewByWarning(cfg *connectConfig, now time.Time) string {
	if cfg == nil || cfg.RenewBy.IsZero() || now.Before(cfg.RenewBy.Add(-renewByWarningWindow)) {
		return ""
	}
	if now.Before(cfg.RenewBy) {
		return fmt.Sprintf("the Instacart Connect credentials must be renewed by %s (renew_by): create the new credentials with Instacart, then write client_id, client_secret and the next renew_by to config", formatRenewBy(cfg.RenewBy))
	}
	return fmt.Sprintf("the Instacart Connect credentials were to be renewed by %s (renew_by), which has passed: create the new credentials with Instacart, then write client_id, client_secret and the next renew_by to config", formatRenewBy(cfg.RenewBy))
}

// addRenewBy shows renew_by, when set, in a config read, with the reminder
// when it is due.
func addRenewBy(resp *logical.Response, cfg *connectConfig, now time.Time) {
	if cfg.RenewBy.IsZero() {
		return
	}
	resp.Data["renew_by"] = formatRenewBy(cfg.RenewBy)
	if w := renewByWarning(cfg, now); w != "" {
		resp.AddWarning(w)
	}
}

// credsRenewByWarning is the reminder for creds responses: one atomic load
// and a few comparisons while none is due.
func (b *backend) credsRenewByWarning() string {
	snap := b.snapshot.Load()
	if snap == nil || snap.config == nil || snap.config.RenewBy.IsZero() {
		return ""
	}
	return renewByWarning(snap.config, b.now())
}
