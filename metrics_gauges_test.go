package instacart

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/version"
)

// roleOnly labels a per-role gauge.
func roleOnly(name string) map[string]string { return map[string]string{"role": name} }

// series counts the series of s, over every family, whose role label is name.
func (s scraped) series(role string) []string {
	var out []string
	for name, mf := range s {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "role" && lp.GetValue() == role {
					out = append(out, name)
				}
			}
		}
	}
	return out
}

// TestMetricsGaugesFollowWrites: the gauges are rebuilt at most once per
// gaugeRefreshInterval, but the first scrape after a config or role write (or
// delete) shows it, with the clock standing still.
func TestMetricsGaugesFollowWrites(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	e.mustOK(logical.UpdateOperation, "roles/shared", map[string]any{"grant_type": cc, "scopes": "connect:fulfillment"})
	e.mustOK(logical.ReadOperation, "creds/shared", nil)
	s := e.scrape()
	if got := s.get(metricSharedTokens, roleOnly("shared")); got != 1 {
		t.Fatalf("shared tokens after a mint: %v", got)
	}
	if _, ok := s.value(metricSharedExpiry, roleOnly("shared")); !ok {
		t.Fatal("no expiry for the role-wide token")
	}

	// Writes that change no gauge do not force a rebuild of their own: a
	// mint between scrapes shows once the interval has passed.
	e.mustOK(logical.UpdateOperation, "roles/other", map[string]any{"grant_type": cc})
	if got := e.scrape().get(metricSharedTokens, roleOnly("other")); got != 0 {
		t.Errorf("shared tokens of a new role: %v", got)
	}
	e.mustOK(logical.ReadOperation, "creds/other", nil)
	if _, ok := e.scrape().value(metricSharedExpiry, roleOnly("other")); ok {
		t.Error("a mint showed before the interval passed, with no write: the gauges are not cached")
	}
	e.advance(gaugeRefreshInterval)
	if _, ok := e.scrape().value(metricSharedExpiry, roleOnly("other")); !ok {
		t.Error("a mint did not show once the interval passed")
	}

	// A config write: renew_by shows at the next scrape.
	due := e.b.now().Add(90 * 24 * time.Hour).UTC().Truncate(24 * time.Hour)
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"renew_by": due.Format(time.DateOnly)})
	if got, ok := e.scrape().value(metricRenewBy, map[string]string{}); !ok || got != float64(due.Unix()) {
		t.Errorf("renew_by after a config write: %v (present %v), want %d", got, ok, due.Unix())
	}
	// A role edit takes its token out of service: its expiry goes at once.
	e.mustOK(logical.UpdateOperation, "roles/shared", map[string]any{"scopes": "connect:fulfillment,connect:data_ingestion"})
	if _, ok := e.scrape().value(metricSharedExpiry, roleOnly("shared")); ok {
		t.Error("the expiry of a token the edited role no longer serves is still reported")
	}
	// A config delete: renew_by goes.
	e.mustOK(logical.DeleteOperation, "config", nil)
	if _, ok := e.scrape().value(metricRenewBy, map[string]string{}); ok {
		t.Error("renew_by still reported after the config was deleted")
	}
}

// TestMetricsDeletedRoleSeriesGo: deleting a role drops every series it had
// (reads, token requests, gauges) at the next scrape; created again, it starts
// from 0. The verify token's series are labelled @verify, never role="".
func TestMetricsDeletedRoleSeriesGo(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	e.mustOK(logical.UpdateOperation, "roles/gone", map[string]any{"grant_type": cc})
	e.mustOK(logical.UpdateOperation, "roles/kept", map[string]any{"grant_type": cc})
	for range 3 {
		e.mustOK(logical.ReadOperation, "creds/gone", nil)
	}
	e.mustOK(logical.ReadOperation, "creds/kept", nil)
	s := e.scrape()
	if got := s.get(metricCredsReads, reads("gone", "memory")); got != 2 {
		t.Fatalf("reads of gone before the delete: %v", got)
	}
	for _, name := range []string{metricCredsReads, metricTokenRequests, metricSharedTokens, metricSharedExpiry, metricPending} {
		if !strings.Contains(strings.Join(s.series("gone"), " "), name) {
			t.Errorf("before the delete, gone has no %s series", name)
		}
	}
	if got := s.get(metricTokenRequests, reqs(verifyRole, cc, "minted")); got != 1 || verifyRole != "@verify" {
		t.Errorf("verify mint under role %q: %v", verifyRole, got)
	}
	if got := s.series(""); len(got) != 0 {
		t.Errorf("series with role=\"\": %v", got)
	}
	// The verify token's log lines name it the same way, with its grant.
	for _, parts := range [][]string{
		{"token request", "role=@verify", "grant=client_credentials", "outcome=minted"},
		{"token revocation", "role=@verify", "grant=client_credentials", "outcome=revoked"},
	} {
		found := false
		for _, l := range strings.Split(e.logs.String(), "\n") {
			n := 0
			for _, p := range parts {
				if strings.Contains(l, p) {
					n++
				}
			}
			found = found || n == len(parts)
		}
		if !found {
			t.Errorf("no log line with %q:\n%s", parts, e.logs.String())
		}
	}

	e.mustOK(logical.DeleteOperation, "roles/gone", nil)
	s = e.scrape()
	if got := s.series("gone"); len(got) != 0 {
		t.Errorf("series of the deleted role: %v", got)
	}
	if got := s.get(metricCredsReads, reads("kept", "minted")); got != 1 {
		t.Errorf("another role's reads went with it: %v", got)
	}

	// Created again: from 0, every counter present (a first increase is
	// one an alert sees).
	e.mustOK(logical.UpdateOperation, "roles/gone", map[string]any{"grant_type": cc})
	s = e.scrape()
	for _, outcome := range outcomeNames {
		if got, ok := s.value(metricTokenRequests, reqs("gone", cc, outcome)); !ok || got != 0 {
			t.Errorf("token requests of the new role, %s: %v (present %v), want 0", outcome, got, ok)
		}
	}
	if got, ok := s.value(metricCredsReads, reads("gone", "memory")); !ok || got != 0 {
		t.Errorf("reads of the new role: %v (present %v), want 0", got, ok)
	}
}

// TestMetricsInvalidatedRoleSeriesGo: a role deleted on another node reaches
// this one as an invalidation; the next scrape drops its series, and keeps
// those of a role that was only rewritten.
func TestMetricsInvalidatedRoleSeriesGo(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	for _, name := range []string{"gone", "kept"} {
		e.mustOK(logical.UpdateOperation, "roles/"+name, map[string]any{"grant_type": cc})
		e.mustOK(logical.ReadOperation, "creds/"+name, nil)
	}
	e.scrape()
	// The active node deletes one role and rewrites the other.
	ctx := context.Background()
	if err := e.storage.Delete(ctx, roleStoragePrefix+"gone"); err != nil {
		t.Fatal(err)
	}
	e.b.invalidate(ctx, roleStoragePrefix+"gone")
	e.b.invalidate(ctx, roleStoragePrefix+"kept")
	s := e.scrape()
	if got := s.series("gone"); len(got) != 0 {
		t.Errorf("series of the role deleted on another node: %v", got)
	}
	if got := s.get(metricCredsReads, reads("kept", "minted")); got != 1 {
		t.Errorf("reads of the rewritten role: %v, want 1", got)
	}
}

// TestMetricsPendingRevocations: tokens waiting in the revocation queue are
// counted per role, and the verify token's queue as @verify; roles with
// none report 0.
func TestMetricsPendingRevocations(t *testing.T) {
	e := newTestEnv(t)
	// The token minted to verify the credentials cannot be revoked for now.
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	e.configure()
	e.fake.ClearFaults()
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"max_retries": 0})
	e.mustOK(logical.UpdateOperation, "roles/excl", map[string]any{"grant_type": cc, "token_reuse": "exclusive"})
	e.mustOK(logical.UpdateOperation, "roles/idle", map[string]any{"grant_type": cc})
	var leases []*logical.Secret
	for range 2 {
		leases = append(leases, e.mustOK(logical.ReadOperation, "creds/excl", nil).Secret)
	}
	for _, l := range leases {
		e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503})
		if err := revoke(e, l); err != nil {
			t.Fatalf("a revocation Connect cannot take is queued, not returned: %v", err)
		}
	}
	e.fake.ClearFaults()
	// A lease revocation is no config or role write: it shows within the
	// refresh interval.
	e.advance(gaugeRefreshInterval)
	s := e.scrape()
	for role, want := range map[string]float64{"excl": 2, verifyRole: 1, "idle": 0} {
		if got, ok := s.value(metricPending, roleOnly(role)); !ok || got != want {
			t.Errorf("pending revocations of %s: %v (present %v), want %v", role, got, ok, want)
		}
	}
	if got := s.get(metricRevocations, map[string]string{"outcome": "error"}); got != 3 {
		t.Errorf("revocations failing for now: %v, want 3", got)
	}

	// A flush retries the queue; the next scrape shows it drained.
	e.mustOK(logical.DeleteOperation, "cache/excl", nil)
	if got := e.scrape().get(metricPending, roleOnly("excl")); got != 0 {
		t.Errorf("pending revocations of excl after a flush: %v, want 0", got)
	}
	// The deleted role's queue is still counted while tokens wait in it.
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503})
	if err := revoke(e, e.mustOK(logical.ReadOperation, "creds/excl", nil).Secret); err != nil {
		t.Fatal(err)
	}
	e.mustOK(logical.DeleteOperation, "roles/excl", nil)
	s = e.scrape()
	if got := s.get(metricPending, roleOnly("excl")); got != 1 {
		t.Errorf("pending revocations of the deleted role: %v, want 1", got)
	}
	if got := s.series("excl"); len(got) != 1 {
		t.Errorf("series of the deleted role with a token queued: %v, want only %s", got, metricPending)
	}
}

// listFailingStorage fails List under a prefix while fail holds one.
type listFailingStorage struct {
	logical.Storage
	fail atomic.Pointer[string]
}

func (s *listFailingStorage) List(ctx context.Context, prefix string) ([]string, error) {
	if p := s.fail.Load(); p != nil && strings.HasPrefix(prefix, *p) {
		return nil, errors.New("storage unavailable")
	}
	return s.Storage.List(ctx, prefix)
}

// TestMetricsServeCountersWhenGaugesFail: a storage error while rebuilding
// the gauges no longer fails the scrape: the counters are served, the gauges
// as last rebuilt, and the failure is counted and logged; the next scrape
// tries again.
func TestMetricsServeCountersWhenGaugesFail(t *testing.T) {
	e := newTestEnv(t)
	st := &listFailingStorage{Storage: e.storage}
	e.storage = st
	e.configure()
	e.mustOK(logical.UpdateOperation, "roles/shared", map[string]any{"grant_type": cc})
	e.mustOK(logical.ReadOperation, "creds/shared", nil)
	e.scrape()

	for _, prefix := range []string{roleStoragePrefix, revokingStoragePrefix} {
		st.fail.Store(&prefix)
		e.mustOK(logical.ReadOperation, "creds/shared", nil)
		e.mustOK(logical.UpdateOperation, "roles/new", map[string]any{"grant_type": cc}) // forces a rebuild
		s := e.scrape()
		if got := s.get(metricCredsReads, reads("shared", "memory")); got == 0 {
			t.Errorf("%s failing: counters not served", prefix)
		}
		if got := s.get(metricSharedTokens, roleOnly("shared")); got != 1 {
			t.Errorf("%s failing: the last gauges were not kept: shared tokens %v", prefix, got)
		}
		if _, ok := s.value(metricSharedTokens, roleOnly("new")); ok {
			t.Errorf("%s failing: a gauge from a failed rebuild was served", prefix)
		}
		if got, ok := s.value(metricBuildInfo, map[string]string{"version": version.Version()}); !ok || got != 1 {
			t.Errorf("build info: %v (present %v)", got, ok)
		}
		st.fail.Store(nil)
		e.mustOK(logical.DeleteOperation, "roles/new", nil)
	}
	s := e.scrape() // storage is back: the failed rebuild is tried again at once
	if got := s.get(metricRefreshErrors, map[string]string{}); got != 2 {
		t.Errorf("%s = %v, want 2", metricRefreshErrors, got)
	}
	if got, ok := s.value(metricPending, roleOnly(verifyRole)); !ok || got != 0 {
		t.Errorf("the gauges were not rebuilt once storage answered: pending %v (present %v)", got, ok)
	}
	if n := strings.Count(e.logs.String(), "could not rebuild the metrics gauges from storage"); n != 2 {
		t.Errorf("%d warnings about the failed rebuilds, want 2", n)
	}
}

// TestMetricsBuildInfo: instacart_build_info carries the plugin's version.
func TestMetricsBuildInfo(t *testing.T) {
	e := newTestEnv(t)
	s := e.scrape()
	if got := s.labelNames(metricBuildInfo); len(got) != 1 {
		t.Fatalf("%s series: %v", metricBuildInfo, got)
	}
	if got, ok := s.value(metricBuildInfo, map[string]string{"version": version.Version()}); !ok || got != 1 {
		t.Errorf("%s{version=%q} = %v (present %v), want 1", metricBuildInfo, version.Version(), got, ok)
	}
}
