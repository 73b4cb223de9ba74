package instacart

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect"
	"github.com/instacart-vault/vault-plugin-secrets-instacart/connect/connectfake"
)

// scraped is one parse of GET metrics.
type scraped map[string]*dto.MetricFamily

// scrape reads metrics as Vault would serve them and parses the text.
func (e *testEnv) scrape() scraped {
	e.t.Helper()
	resp := e.mustOK(logical.ReadOperation, "metrics", nil)
	body, ok := resp.Data[logical.HTTPRawBody].([]byte)
	if !ok {
		e.t.Fatalf("metrics: no raw body in %v", resp.Data)
	}
	var p expfmt.TextParser
	families, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		e.t.Fatalf("metrics: not Prometheus text: %v\n%s", err, body)
	}
	e.record(nil, fmt.Errorf("%s", body)) // scanned for the secret at cleanup
	return families
}

// value is the value of the series of family name with exactly labels
// (counter, gauge, or a histogram's sample count); ok is false when absent.
func (s scraped) value(name string, labels map[string]string) (float64, bool) {
	mf, ok := s[name]
	if !ok {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		if !maps.Equal(got, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// get is value, 0 when absent.
func (s scraped) get(name string, labels map[string]string) float64 {
	v, _ := s.value(name, labels)
	return v
}

// labelNames lists the label names each series of a family carries.
func (s scraped) labelNames(name string) [][]string {
	var out [][]string
	for _, m := range s[name].GetMetric() {
		var names []string
		for _, lp := range m.GetLabel() {
			names = append(names, lp.GetName())
		}
		sort.Strings(names)
		out = append(out, names)
	}
	return out
}

func (s scraped) labelValues() []string {
	var out []string
	for _, mf := range s {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				out = append(out, lp.GetValue())
			}
		}
	}
	return out
}

func reqs(role, grant, outcome string) map[string]string {
	return map[string]string{"role": role, "grant_type": grant, "outcome": outcome}
}

func reads(role, source string) map[string]string {
	return map[string]string{"role": role, "source": source}
}

const (
	cc        = "client_credentials"
	assertion = "fulfillment_user_assertion"
)

// TestMetricsCountWhatHappened drives mints, cache hits (memory and
// storage), a stale read while Connect is down, retries, a rejection, a
// timeout and revocations of every outcome, then checks each series against
// what happened, and that labels are exactly the documented ones.
func TestMetricsCountWhatHappened(t *testing.T) {
	e := newTestEnv(t)
	e.configure() // verify: one mint and one revocation, for no role
	e.mustOK(logical.UpdateOperation, "roles/shared", map[string]any{"grant_type": cc, "scopes": "connect:fulfillment"})
	e.mustOK(logical.UpdateOperation, "roles/excl", map[string]any{"grant_type": cc, "token_reuse": "exclusive"})
	e.mustOK(logical.UpdateOperation, "roles/shoppers", map[string]any{"grant_type": assertion, "scopes": "connect:recommendations", "allowed_user_ids": "store-*"})
	e.mustOK(logical.UpdateOperation, "roles/kamal", map[string]any{"grant_type": assertion, "scopes": "connect:recommendations", "user_id": "kamalsingh1234"})

	var tokens []string
	read := func(role string, data map[string]any) *logical.Response {
		t.Helper()
		var op logical.Operation = logical.ReadOperation
		if data != nil {
			op = logical.UpdateOperation
		}
		resp := e.mustOK(op, "creds/"+role, data)
		tokens = append(tokens, resp.Data["access_token"].(string))
		return resp
	}
	for range 3 {
		read("shared", nil) // 1 minted, 2 from memory
	}
	read("shoppers", map[string]any{"user_id": "store-1"})
	read("shoppers", map[string]any{"user_id": "store-2"})
	read("shoppers", map[string]any{"user_id": "store-1"}) // memory
	read("kamal", nil)
	excl := []*logical.Response{read("excl", nil), read("excl", nil)}
	e.b.tokens.clear()
	read("shared", nil) // from storage

	// A 503 retried, then a token.
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503})
	excl = append(excl, read("excl", nil))
	// A refusal retrying cannot fix.
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 400, Body: `{"error":"invalid_scope","error_description":"no"}`})
	if resp, err := e.do(logical.ReadOperation, "creds/excl", nil); err == nil && !resp.IsError() {
		t.Fatal("a 400 from Connect was a successful read")
	}
	// A Connect that never answers, without retries.
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "1s", "max_retries": 0})
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Hang: true})
	if resp, err := e.do(logical.ReadOperation, "creds/excl", nil); err == nil && !resp.IsError() {
		t.Fatal("a hung Connect gave a token")
	}
	e.fake.ClearFaults()
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"request_timeout": "10s", "max_retries": 2})

	// Revocations: one revoked, one refused, one failing for now, one
	// expired (nothing sent).
	if err := revoke(e, excl[0].Secret); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 403, Body: `{"error":"unauthorized_client"}`})
	if err := revoke(e, excl[1].Secret); err != nil {
		t.Fatalf("a refused revocation is logged, not returned: %v", err)
	}
	e.fake.InjectFaults(connectfake.PathRevoke, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	if err := revoke(e, excl[2].Secret); err != nil {
		t.Fatalf("a revocation Connect could not take is queued, not returned: %v", err)
	}
	e.fake.ClearFaults()

	// Connect down as the shared token is due for replacement: the cached
	// one is served.
	e.advance(23*time.Hour + 30*time.Minute)
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 503})
	stale := read("shared", nil)
	if len(stale.Warnings) == 0 {
		t.Fatal("no warning with the token served while Connect is down")
	}
	e.fake.ClearFaults()
	e.advance(time.Hour) // every token has expired
	if err := revoke(e, excl[2].Secret); err != nil {
		t.Fatalf("revoking an expired token: %v", err)
	}

	s := e.scrape()
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{metricTokenRequests, reqs(verifyRole, cc, "minted"), 1}, // verify
		{metricTokenRequests, reqs("shared", cc, "minted"), 1},
		{metricTokenRequests, reqs("shared", cc, "transient_error"), 3},
		{metricTokenRequests, reqs("shoppers", assertion, "minted"), 2},
		{metricTokenRequests, reqs("kamal", assertion, "minted"), 1},
		{metricTokenRequests, reqs("excl", cc, "minted"), 3},
		{metricTokenRequests, reqs("excl", cc, "transient_error"), 1},
		{metricTokenRequests, reqs("excl", cc, "rejected"), 1},
		{metricTokenRequests, reqs("excl", cc, "timeout"), 1},

		{metricCredsReads, reads("shared", "minted"), 1},
		{metricCredsReads, reads("shared", "memory"), 2},
		{metricCredsReads, reads("shared", "storage"), 1},
		{metricCredsReads, reads("shared", "stale_while_down"), 1},
		{metricCredsReads, reads("shoppers", "minted"), 2},
		{metricCredsReads, reads("shoppers", "memory"), 1},
		{metricCredsReads, reads("kamal", "minted"), 1},
		{metricCredsReads, reads("excl", "minted"), 3},
		{metricCredsReads, reads("excl", "memory"), 0},

		{metricUpstreamRetries, map[string]string{"status": "503"}, 1 + 2 + 2},

		{metricRevocations, map[string]string{"outcome": "revoked"}, 2}, // excl[0], and the token minted to verify the credentials
		{metricRevocations, map[string]string{"outcome": "refused"}, 1},
		{metricRevocations, map[string]string{"outcome": "error"}, 1},
		{metricRevocations, map[string]string{"outcome": "skipped_expired"}, 1},

		// Token attempts: 1 verify + 1+3 shared + 2 shoppers + 1 kamal +
		// 6 excl; revoke attempts: the verify token's, then 1 + 1 + 3.
		{metricUpstreamDuration, map[string]string{"endpoint": "token"}, 1 + 4 + 2 + 1 + 6},
		{metricUpstreamDuration, map[string]string{"endpoint": "revoke"}, 1 + 1 + 1 + 3},

		{metricSharedTokens, map[string]string{"role": "shared"}, 1},
		{metricSharedTokens, map[string]string{"role": "shoppers"}, 2},
		{metricSharedTokens, map[string]string{"role": "kamal"}, 1},
	} {
		if got, _ := s.value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if _, ok := s.value(metricSharedTokens, map[string]string{"role": "excl"}); ok {
		t.Error("an exclusive role reports shared tokens")
	}
	if _, ok := s.value(metricSharedExpiry, map[string]string{"role": "shoppers"}); ok {
		t.Error("a role with per-user tokens reports one expiry")
	}
	if _, ok := s.value(metricRenewBy, map[string]string{}); ok {
		t.Error("the renew_by gauge is present without renew_by")
	}
	for _, role := range []string{"shared", "kamal"} {
		if got, ok := s.value(metricSharedExpiry, map[string]string{"role": role}); !ok || got <= 0 {
			t.Errorf("expiry of %s's token: %v (present %v)", role, got, ok)
		}
	}
	shared, err := e.b.tokens.load(context.Background(), e.storage, tokenKey("shared", ""))
	if err != nil || shared == nil {
		t.Fatalf("the shared token in storage: %v %v", shared, err)
	}
	if got := s.get(metricSharedExpiry, map[string]string{"role": "shared"}); got != float64(shared.ExpiresAt.Unix()) {
		t.Errorf("shared token expiry = %v, want %v", got, shared.ExpiresAt.Unix())
	}

	// Labels are exactly the documented ones; no value is a user id, a
	// token or a secret.
	for name, want := range map[string][]string{
		metricTokenRequests:    {"grant_type", "outcome", "role"},
		metricCredsReads:       {"role", "source"},
		metricUpstreamDuration: {"endpoint"},
		metricUpstreamRetries:  {"status"},
		metricRevocations:      {"outcome"},
		metricSharedTokens:     {"role"},
		metricSharedExpiry:     {"role"},
		metricPending:          {"role"},
		metricBuildInfo:        {"version"},
	} {
		series := s.labelNames(name)
		if len(series) == 0 {
			t.Errorf("%s has no series", name)
		}
		for _, got := range series {
			if !slices.Equal(got, want) {
				t.Errorf("%s labels %v, want %v", name, got, want)
			}
		}
	}
	for _, v := range s.labelValues() {
		if strings.Contains(v, "store-") || strings.Contains(v, "kamalsingh") || slices.Contains(tokens, v) || strings.Contains(v, testSecret) {
			t.Errorf("label value %q is a user id, a token or a secret", v)
		}
	}
	if got := len(s); got != 10 {
		t.Errorf("%d metric families, want 10 (renew_by unset): %v", got, slices.Sorted(maps.Keys(s)))
	}
	for _, mf := range s {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "role" && lp.GetValue() == "" {
					t.Errorf("%s has a series with role=\"\"", mf.GetName())
				}
			}
		}
	}
	if mf := s[metricUpstreamDuration]; mf.GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("%s is a %v", metricUpstreamDuration, mf.GetType())
	}
	logs := e.logs.String()
	for _, tok := range tokens {
		if strings.Contains(logs, tok) {
			t.Fatal("an access token is in the logs")
		}
	}
}

// TestMetricsLogLines: one info line per mint and per revocation naming
// role, grant, outcome and duration; per-user mints at debug; one warning per
// retry storm; never a token, code or assertion.
func TestMetricsLogLines(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	e.mustOK(logical.UpdateOperation, "roles/excl", map[string]any{"grant_type": cc, "token_reuse": "exclusive"})
	e.mustOK(logical.UpdateOperation, "roles/shoppers", map[string]any{"grant_type": assertion, "scopes": "connect:recommendations", "allowed_user_ids": "store-*"})
	e.mustOK(logical.UpdateOperation, "roles/linking", map[string]any{"grant_type": "authorization_code", "scopes": "account_linking", "redirect_uri": "https://shop.example.com/cb"})
	start := len(e.logs.String())

	resp := e.mustOK(logical.ReadOperation, "creds/excl", nil)
	if err := revoke(e, resp.Secret); err != nil {
		t.Fatal(err)
	}
	user := e.mustOK(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-77"})
	e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 400, Body: `{"error":"invalid_scope"}`})
	if resp, err := e.do(logical.UpdateOperation, "creds/shoppers", map[string]any{"user_id": "store-78"}); err == nil && !resp.IsError() {
		t.Fatal("a refused per-user mint succeeded")
	}
	code := e.fake.IssueAuthorizationCode(testClientID, "https://shop.example.com/cb", "linked")
	linked := e.mustOK(logical.UpdateOperation, "creds/linking", map[string]any{"code": code})
	// A storm: three reads, each retried twice.
	for range 3 {
		e.fake.InjectFaults(connectfake.PathToken, connectfake.Fault{Status: 503}, connectfake.Fault{Status: 502})
		e.mustOK(logical.ReadOperation, "creds/excl", nil)
	}
	logs := e.logs.String()[start:]
	lines := strings.Split(logs, "\n")
	find := func(level, msg string, fields ...string) []string {
		var out []string
	next:
		for _, l := range lines {
			if (level != "" && !strings.Contains(l, "["+level+"]")) || !strings.Contains(l, msg) { // "": any level
				continue
			}
			for _, f := range fields {
				if !strings.Contains(l, f) {
					continue next
				}
			}
			out = append(out, l)
		}
		return out
	}
	if got := find("INFO", "token request", "role=excl", "grant=client_credentials", "outcome=minted", "attempts=1", "duration="); len(got) != 1 {
		t.Errorf("%d info lines for the exclusive mint, want 1:\n%s", len(got), logs)
	}
	if got := find("INFO", "token revocation", "role=excl", "grant=client_credentials", "outcome=revoked", "duration="); len(got) != 1 {
		t.Errorf("%d info lines for the revocation, want 1:\n%s", len(got), logs)
	}
	if got := find("", "token request", "role=shoppers", "outcome=minted"); len(got) != 0 {
		t.Errorf("a per-user mint was logged (it is counted, not logged): %v", got)
	}
	if got := find("DEBUG", "token request", "role=shoppers", "grant=fulfillment_user_assertion", "outcome=rejected", "per_user=true", "status=400"); len(got) != 1 {
		t.Errorf("%d debug lines for the refused per-user mint, want 1:\n%s", len(got), logs)
	}
	if got := find("INFO", "token request", "role=shoppers"); len(got) != 0 {
		t.Errorf("per-user mint logged at info: %v", got)
	}
	if got := find("INFO", "token request", "role=linking", "grant=authorization_code", "outcome=minted"); len(got) != 1 {
		t.Errorf("%d info lines for the linking mint, want 1:\n%s", len(got), logs)
	}
	if got := find("INFO", "token request", "role=excl", "outcome=minted", "attempts=3"); len(got) != 3 {
		t.Errorf("%d lines for the retried mints, want 3:\n%s", len(got), logs)
	}
	if got := find("WARN", "retry"); len(got) != 1 {
		t.Errorf("%d warnings about retries for one storm of 6 retries, want 1:\n%s", len(got), logs)
	}
	if got := find("ERROR", ""); len(got) != 0 {
		t.Errorf("error lines: %v", got)
	}
	for what, s := range map[string]string{
		"a token": resp.Data["access_token"].(string), "a user's token": user.Data["access_token"].(string),
		"a linked token": linked.Data["access_token"].(string), "the code": code, "the user id": "store-77",
		"the assertion": connect.Assertion("store-77"),
	} {
		if strings.Contains(logs, s) {
			t.Errorf("%s is in the logs", what)
		}
	}
	t.Logf("sample lines:\n%s\n%s\n%s", find("INFO", "token request", "role=excl")[0], find("INFO", "token revocation")[0], find("WARN", "retry")[0])
}

// TestMetricsPerMount: two backends (two mounts in one multiplexed process)
// keep their own figures.
func TestMetricsPerMount(t *testing.T) {
	a, b := newTestEnv(t), newTestEnv(t)
	for _, e := range []*testEnv{a, b} {
		e.configure()
		e.mustOK(logical.UpdateOperation, "roles/shared", map[string]any{"grant_type": cc})
	}
	for range 4 {
		a.mustOK(logical.ReadOperation, "creds/shared", nil)
	}
	b.mustOK(logical.ReadOperation, "creds/shared", nil)
	if got := a.scrape().get(metricCredsReads, reads("shared", "memory")); got != 3 {
		t.Errorf("mount a: %v cached reads, want 3", got)
	}
	sb := b.scrape()
	if got := sb.get(metricCredsReads, reads("shared", "memory")); got != 0 {
		t.Errorf("mount b: %v cached reads, want 0", got)
	}
	if got := sb.get(metricTokenRequests, reqs("shared", cc, "minted")); got != 1 {
		t.Errorf("mount b: %v mints, want 1", got)
	}
}

// TestMetricsPathFormat: text format by default, and any other format is a
// 400 naming format.
func TestMetricsPathFormat(t *testing.T) {
	e := newTestEnv(t)
	resp := e.mustOK(logical.ReadOperation, "metrics", map[string]any{"format": "prometheus"})
	if ct := resp.Data[logical.HTTPContentType]; ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("content type %v", ct)
	}
	if st := resp.Data[logical.HTTPStatusCode]; st != 200 {
		t.Errorf("status %v", st)
	}
	// Unconfigured: every counter family is there, empty, and scrapes parse.
	if s := e.scrape(); s[metricRevocations] == nil || s.get(metricRevocations, map[string]string{"outcome": "revoked"}) != 0 {
		t.Errorf("unconfigured scrape: %v", slices.Sorted(maps.Keys(s)))
	}
	// The retries an alert watches are there at 0, so the first one is an
	// increase rate() can see.
	for _, status := range []string{"429", "503", "network"} {
		if v, ok := e.scrape().value(metricUpstreamRetries, map[string]string{"status": status}); !ok || v != 0 {
			t.Errorf("retries{status=%q} before any request: %v (present %v), want 0", status, v, ok)
		}
	}
	r, err := e.do(logical.ReadOperation, "metrics", map[string]any{"format": "json"})
	expectError(t, r, err, "format")
}

// TestCachedReadCountsWithoutAllocating: what a cache hit adds, a counter
// increment on a series resolved once per role, allocates nothing; nor does
// the renew_by check while no reminder is due.
func TestCachedReadCountsWithoutAllocating(t *testing.T) {
	e := newTestEnv(t)
	e.configure()
	e.mustOK(logical.UpdateOperation, "config", map[string]any{"renew_by": e.b.now().Add(60 * 24 * time.Hour).Format(time.DateOnly)})
	e.mustOK(logical.UpdateOperation, "roles/shared", map[string]any{"grant_type": cc})
	e.mustOK(logical.ReadOperation, "creds/shared", nil)
	name := strings.Clone("shared")
	if n := testing.AllocsPerRun(1000, func() { e.b.metrics.read(name, sourceMemory) }); n != 0 {
		t.Errorf("counting a cached read allocates %v times", n)
	}
	if n := testing.AllocsPerRun(1000, func() { _ = e.b.credsRenewByWarning() }); n != 0 {
		t.Errorf("the renew_by check allocates %v times", n)
	}
	if got := e.scrape().get(metricCredsReads, reads("shared", "memory")); got < 1000 {
		t.Errorf("cached reads counted: %v", got)
	}
}

// TestRetryStormWarnsOncePerStorm: the first retry warns, later ones of the
// same storm do not; an answer at the first attempt a quiet minute later ends
// it (one info line), and the next retry warns again.
func TestRetryStormWarnsOncePerStorm(t *testing.T) {
	var buf syncBuffer
	l := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Trace})
	now := time.Unix(1_800_000_000, 0)
	s := &retryStorm{now: func() time.Time { return now }}
	retry := connect.Attempt{Endpoint: connect.EndpointToken, Grant: connect.GrantClientCredentials, Number: 1, Status: 503}
	count := func(what string) int { return strings.Count(buf.String(), what) }

	for range 5 {
		s.retry(l, retry, "503", "shared")
		now = now.Add(10 * time.Second)
	}
	s.healthy(l, connect.Attempt{Number: 1}) // 10 s after the last retry: the storm goes on
	if count("[WARN]") != 1 || count("storm over") != 0 {
		t.Fatalf("after 5 retries in one storm:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "role=shared") || !strings.Contains(buf.String(), "status=503") {
		t.Errorf("the warning does not name the role and status:\n%s", buf.String())
	}
	now = now.Add(2 * time.Minute)
	s.healthy(l, connect.Attempt{Number: 2}) // retried itself: not a sign of health
	s.healthy(l, connect.Attempt{Number: 1})
	if count("storm over") != 1 || !strings.Contains(buf.String(), "retries=5") {
		t.Fatalf("a first-attempt answer a quiet minute later does not end the storm:\n%s", buf.String())
	}
	s.retry(l, retry, "network", "shared")
	now = now.Add(5 * time.Minute)
	s.retry(l, retry, "503", "shared") // a quiet gap, then retries again: a new storm
	if count("[WARN]") != 3 || count("storm over") != 2 {
		t.Errorf("two more storms: %d warnings, %d ends:\n%s", count("[WARN]"), count("storm over"), buf.String())
	}
}
