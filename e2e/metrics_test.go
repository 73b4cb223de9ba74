//go:build e2e

package e2e

import (
	"io"
	"maps"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// TestMetricsThroughVault scrapes instacart/metrics through a real Vault, the
// way examples/prometheus/prometheus.yml tells Prometheus to (a Bearer token
// with the metrics policy, format=prometheus), after mints, cache hits, a
// retry, a revocation and a renew_by date, and checks every count against
// what happened and against what the Connect fake received. Tokens with the
// app policy get a 403 there; the operator policy reads it. The plugin's log
// carries one line per mint and revocation and one warning for the retry.
func TestMetricsThroughVault(t *testing.T) {
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f) // verify: one token request and one revocation, for no role
	v.vault(t, "write", "instacart/config", "max_retries=1")
	v.vault(t, "write", "instacart/roles/shared", "grant_type=client_credentials", "scopes=connect:fulfillment")
	v.vault(t, "write", "instacart/roles/excl", "grant_type=client_credentials", "token_reuse=exclusive")
	v.vault(t, "write", "instacart/roles/shoppers", "grant_type=fulfillment_user_assertion", "scopes=connect:recommendations", "allowed_user_ids=store-*")
	t.Cleanup(func() { check(t, f.ClearFaults()) })

	var tokens tokenSet
	read := func(args ...string) creds {
		t.Helper()
		var c creds
		v.vaultJSON(t, &c, args...)
		tokens.add(c.Data.AccessToken)
		return c
	}
	var shared creds
	for range 3 {
		shared = read("read", "instacart/creds/shared") // 1 mint, 2 from memory
	}
	read("write", "instacart/creds/shoppers", "user_id=store-1")
	read("write", "instacart/creds/shoppers", "user_id=store-2")
	read("write", "instacart/creds/shoppers", "user_id=store-1") // memory
	excl := read("read", "instacart/creds/excl")
	read("read", "instacart/creds/excl")
	f.InjectFaults(t, pathToken, map[string]any{"status": 503}) // retried once
	read("read", "instacart/creds/excl")
	f.InjectFaults(t, pathToken, map[string]any{"status": 400, "body": `{"error":"invalid_scope","error_description":"The requested scope is invalid"}`})
	if _, errOut, code := v.cli(t, v.Token, "", "read", "instacart/creds/excl"); code == 0 || !strings.Contains(errOut, "invalid_scope") {
		t.Fatalf("a 400 invalid_scope from Connect: exit %d\n%s", code, errOut)
	}
	v.vault(t, "lease", "revoke", "-sync", excl.LeaseID)
	if st := f.Users(t, excl.Data.AccessToken); st != 401 {
		t.Fatalf("the revoked token still works (%d)", st)
	}

	// renew_by 10 days out: reminders and the gauge.
	renewBy := time.Now().UTC().Add(10 * 24 * time.Hour).Format(time.DateOnly)
	v.vault(t, "write", "instacart/config", "renew_by="+renewBy)
	var cfg struct {
		Data     map[string]any `json:"data"`
		Warnings []string       `json:"warnings"`
	}
	v.vaultJSON(t, &cfg, "read", "instacart/config")
	if cfg.Data["renew_by"] != renewBy || !strings.Contains(strings.Join(cfg.Warnings, "\n"), renewBy) {
		t.Errorf("config read: renew_by %v, warnings %v; want %s named in a warning", cfg.Data["renew_by"], cfg.Warnings, renewBy)
	}
	if c := read("read", "instacart/creds/shared"); !strings.Contains(strings.Join(c.Warnings, "\n"), renewBy) {
		t.Errorf("creds read 10 days before renew_by: warnings %v", c.Warnings)
	}
	if _, errOut, code := v.cli(t, v.Token, "", "write", "instacart/config", "renew_by=someday"); code == 0 || !strings.Contains(errOut, "renew_by") || !strings.Contains(errOut, "Code: 400") {
		t.Errorf("a bad renew_by: exit %d, want a 400 naming renew_by:\n%s", code, errOut)
	}

	// Tokens: the metrics policy (what Prometheus holds), the operator's
	// and the application's.
	v.vault(t, "policy", "write", "instacart-metrics", filepath.Join(repoRoot, "examples/policies/metrics.hcl"))
	v.vault(t, "policy", "write", "instacart-operator", filepath.Join(repoRoot, "examples/policies/operator.hcl"))
	scraper := strings.TrimSpace(v.vault(t, "token", "create", "-policy=instacart-metrics", "-field=token"))
	operator := strings.TrimSpace(v.vault(t, "token", "create", "-policy=instacart-operator", "-field=token"))
	app := v.appToken(t)

	// The scrape Prometheus makes with examples/prometheus/prometheus.yml.
	job := readFileString(t, filepath.Join(repoRoot, "examples/prometheus/prometheus.yml"))
	metricsPath := yamlValue(t, job, `metrics_path:\s*(\S+)`)
	format := yamlValue(t, job, `format:\s*\[\s*(\w+)\s*\]`)
	credsFile := yamlValue(t, job, `credentials_file:\s*(\S+)`)
	if metricsPath != "/v1/instacart/metrics" || format != "prometheus" || credsFile == "" {
		t.Fatalf("prometheus.yml: metrics_path %q, format %q, credentials_file %q", metricsPath, format, credsFile)
	}
	// docs/operations.md shows the job as it is in the file.
	var jobLines []string
	for _, l := range strings.Split(job, "\n") {
		if !strings.HasPrefix(l, "#") {
			jobLines = append(jobLines, l)
		}
	}
	if ops := readFileString(t, filepath.Join(repoRoot, "docs/operations.md")); !strings.Contains(ops, "```yaml\n"+strings.TrimSpace(strings.Join(jobLines, "\n"))+"\n```") {
		t.Error("docs/operations.md's scrape job differs from examples/prometheus/prometheus.yml")
	}
	tokenFile := filepath.Join(t.TempDir(), filepath.Base(credsFile))
	writeFile(t, tokenFile, scraper+"\n")
	scrape := func(tokenFile string) (int, string, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, v.Addr+metricsPath+"?format="+format, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Prometheus reads credentials_file and trims it.
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(readFileString(t, tokenFile)))
		req.Header.Set("Accept", "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(body)
	}
	status, contentType, body := scrape(tokenFile)
	if status != 200 {
		t.Fatalf("scrape with the metrics policy: HTTP %d: %s", status, v.Redact(body))
	}
	if !strings.HasPrefix(contentType, "text/plain") || !strings.Contains(contentType, "version=0.0.4") {
		t.Errorf("Content-Type %q, want Prometheus text", contentType)
	}
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("the scrape is not Prometheus text: %v\n%s", err, body)
	}
	m := metricSet(families)
	stats := f.Stats(t)

	cc, ua := "client_credentials", "fulfillment_user_assertion"
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"instacart_token_requests_total", reqLabels("@verify", cc, "minted"), 1},
		{"instacart_token_requests_total", reqLabels("shared", cc, "minted"), 1},
		{"instacart_token_requests_total", reqLabels("shoppers", ua, "minted"), 2},
		{"instacart_token_requests_total", reqLabels("excl", cc, "minted"), 3},
		{"instacart_token_requests_total", reqLabels("excl", cc, "transient_error"), 1},
		{"instacart_token_requests_total", reqLabels("excl", cc, "rejected"), 1},
		{"instacart_token_requests_total", reqLabels("excl", cc, "timeout"), 0},
		{"instacart_creds_reads_total", readLabels("shared", "minted"), 1},
		{"instacart_creds_reads_total", readLabels("shared", "memory"), 3},
		{"instacart_creds_reads_total", readLabels("shoppers", "minted"), 2},
		{"instacart_creds_reads_total", readLabels("shoppers", "memory"), 1},
		{"instacart_creds_reads_total", readLabels("excl", "minted"), 3},
		{"instacart_upstream_retries_total", map[string]string{"status": "503"}, 1},
		// The verify token goes through the revocation queue like every
		// discarded token, so its revocation counts too: it and the lease's.
		{"instacart_revocations_total", map[string]string{"outcome": "revoked"}, 2},
		{"instacart_revocations_total", map[string]string{"outcome": "refused"}, 0},
		{"instacart_upstream_request_duration_seconds", map[string]string{"endpoint": "token"}, float64(stats.Requests[pathToken])},
		{"instacart_upstream_request_duration_seconds", map[string]string{"endpoint": "revoke"}, float64(stats.Requests[pathRevoke])},
		{"instacart_shared_tokens", map[string]string{"role": "shared"}, 1},
		{"instacart_shared_tokens", map[string]string{"role": "shoppers"}, 2},
		{"instacart_shared_token_expiry_timestamp_seconds", map[string]string{"role": "shared"}, float64(shared.expiresAt(t).Unix())},
		{"instacart_credentials_renew_by_timestamp_seconds", map[string]string{}, float64(mustDate(t, renewBy).Unix())},
		{"instacart_build_info", map[string]string{"version": oldVersion}, 1},
		{"instacart_pending_revocations", map[string]string{"role": "@verify"}, 0},
		{"instacart_pending_revocations", map[string]string{"role": "excl"}, 0},
		{"instacart_gauge_refresh_errors_total", map[string]string{}, 0},
	} {
		if got, ok := m.value(c.name, c.labels); got != c.want || !ok && c.want != 0 {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	// What the fake received: one token request per attempt, all counted.
	if got := m.sum("instacart_token_requests_total"); got != float64(stats.Requests[pathToken]) || stats.Requests[pathToken] != 9 {
		t.Errorf("token requests counted %v; the fake received %d (want 9: verify, shared, 2 users, excl ×3 with one retried, one refused)", got, stats.Requests[pathToken])
	}
	if stats.Requests[pathRevoke] != 2 || stats.Revocations != 2 {
		t.Errorf("the fake received %d revocations (%d revoked), want 2: the verify token and the lease", stats.Requests[pathRevoke], stats.Revocations)
	}
	if _, ok := m.value("instacart_shared_token_expiry_timestamp_seconds", map[string]string{"role": "shoppers"}); ok {
		t.Error("an expiry is reported for a role of per-user tokens")
	}
	for _, val := range m.labelValues() {
		if strings.Contains(val, "store-") {
			t.Errorf("label value %q is a user id", val)
		}
	}
	if _, ok := m.value("instacart_token_requests_total", reqLabels("", cc, "minted")); ok {
		t.Error(`the verify mint is still labelled role=""`)
	}
	assertNoSecrets(t, "the scrape", body, f.Secret(), tokens.all())

	// Vault's ACL gates the path: the app policy gets 403, the operator's
	// reads it; the metrics policy reads nothing else.
	for _, c := range []struct {
		who, token string
		want       int
	}{{"app", app, 403}, {"operator", operator, 200}, {"no token", "", 403}} {
		file := filepath.Join(t.TempDir(), "token")
		writeFile(t, file, c.token)
		if st, _, _ := scrape(file); st != c.want {
			t.Errorf("%s policy: GET %s: HTTP %d, want %d", c.who, metricsPath, st, c.want)
		}
	}
	for _, path := range []string{"instacart/creds/shared", "instacart/config", "instacart/roles/shared"} {
		if st, _, _ := v.CallAs(scraper, http.MethodGet, path, nil, nil); st != 403 {
			t.Errorf("metrics policy: GET %s: HTTP %d, want 403", path, st)
		}
	}
	if _, errOut, code := v.cli(t, app, "", "read", "instacart/metrics"); code == 0 || !strings.Contains(errOut, "403") {
		t.Errorf("app policy: vault read instacart/metrics: exit %d, want 403:\n%s", code, errOut)
	}

	// Logs: one line per mint and per revocation, but none for a per-user
	// token minted (counted, not logged), one warning for the retry, and no
	// token or secret.
	log := v.Log(t)
	lines := func(level string, parts ...string) int {
		n := 0
	next:
		for _, l := range strings.Split(log, "\n") {
			if !strings.Contains(l, "["+level+"]") {
				continue
			}
			for _, p := range parts {
				if !strings.Contains(l, p) {
					continue next
				}
			}
			n++
		}
		return n
	}
	for _, c := range []struct {
		level string
		parts []string
		want  int
	}{
		{"INFO", []string{"token request:", "role=shared", "grant=client_credentials", "outcome=minted", "attempts=1", "duration="}, 1},
		{"INFO", []string{"token request:", "role=excl", "outcome=minted", "attempts=2"}, 1},
		{"DEBUG", []string{"token request:", "role=shoppers"}, 0},
		{"INFO", []string{"token request:", "role=shoppers"}, 0},
		{"INFO", []string{"token request:", "role=excl", "outcome=rejected", "status=400", "error_code=invalid_scope"}, 1},
		{"INFO", []string{"token revocation:", "role=excl", "grant=client_credentials", "outcome=revoked", "duration="}, 1},
		{"WARN", []string{"Connect is failing, retrying", "status=503", "role=excl"}, 1},
	} {
		if got := lines(c.level, c.parts...); got != c.want {
			t.Errorf("%d [%s] log lines with %q, want %d", got, c.level, c.parts, c.want)
		}
	}
	if strings.Contains(log, "store-1") || strings.Contains(log, "store-2") {
		t.Error("a user id is in Vault's log")
	}
	assertNoSecrets(t, "Vault server log", log, f.Secret(), tokens.all())
	if testing.Verbose() {
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "token request:") || strings.Contains(l, "token revocation:") || strings.Contains(l, "Connect is failing") {
				t.Log(l)
			}
		}
	}
}

func reqLabels(role, grant, outcome string) map[string]string {
	return map[string]string{"role": role, "grant_type": grant, "outcome": outcome}
}

func readLabels(role, source string) map[string]string {
	return map[string]string{"role": role, "source": source}
}

func yamlValue(t *testing.T, doc, pattern string) string {
	t.Helper()
	m := regexp.MustCompile(pattern).FindStringSubmatch(doc)
	if m == nil {
		t.Fatalf("prometheus.yml has no %s", pattern)
	}
	return strings.Trim(m[1], `"'`)
}

func mustDate(t *testing.T, s string) time.Time {
	t.Helper()
	d, err := time.Parse(time.DateOnly, s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// metricSet is a parsed scrape.
type metricSet map[string]*dto.MetricFamily

// value is the series of name with exactly labels: a counter's or gauge's
// value, or a histogram's sample count.
func (s metricSet) value(name string, labels map[string]string) (float64, bool) {
	for _, m := range s[name].GetMetric() {
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

func (s metricSet) sum(name string) float64 {
	total := 0.0
	for _, m := range s[name].GetMetric() {
		total += m.GetCounter().GetValue()
	}
	return total
}

func (s metricSet) labelValues() []string {
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
