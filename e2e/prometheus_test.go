//go:build e2e

package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// Prometheus and promtool come from Debian's prometheus package, which
// `make test` installs where apt-get runs as root (make prometheus). Where
// they are missing the Prometheus tests skip with a NOTE, unless
// E2E_REQUIRE_PROMETHEUS=1 (make sets it once it has them): then a missing
// binary is a failure, never a quiet skip.
func prometheusBins(t *testing.T) (prometheus, promtool string) {
	t.Helper()
	find := func(env, name string) string {
		if p := os.Getenv(env); p != "" {
			return p
		}
		p, _ := exec.LookPath(name)
		return p
	}
	prometheus, promtool = find("PROMETHEUS_BIN", "prometheus"), find("PROMTOOL_BIN", "promtool")
	if prometheus != "" && promtool != "" {
		return prometheus, promtool
	}
	if os.Getenv("E2E_REQUIRE_PROMETHEUS") == "1" {
		t.Fatal("prometheus and promtool are not on PATH, and E2E_REQUIRE_PROMETHEUS=1: run make prometheus")
	}
	t.Skip("NOTE: prometheus and promtool not found (Debian: apt-get install prometheus, or make prometheus as root): skipped")
	return "", ""
}

// TestPrometheusAlertRules runs promtool on the shipped rules, unmodified:
// they load, and every alert's unit tests (one case that fires, others that
// must not) pass.
func TestPrometheusAlertRules(t *testing.T) {
	_, promtool := prometheusBins(t)
	dir := filepath.Join(repoRoot, "examples", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", filepath.Join(dir, "alerts.yml")},
		{"test", "rules", filepath.Join(dir, "alerts_test.yml")},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	}
}

// TestPrometheusScrapesVault runs a real Prometheus with the shipped scrape
// job (examples/prometheus/prometheus.yml) and rules (alerts.yml) against a
// real Vault serving the plugin at two mounts, over TLS, with the metrics
// token read from a 0600 file. The job is edited only where the README tells
// an operator to: the target address, ca_file, credentials_file, and the
// commented group for another mount, uncommented. Prometheus' own settings
// (scrape and rule intervals of 1s, rule_files) are prepended, as an
// operator's prometheus.yml has its own. It waits for both targets to be up
// and queries Prometheus' HTTP API for the series the traffic produced, per
// mount; then deletes a role and watches its series go, queues a revocation
// Connect cannot take and watches the pending gauge show it, and checks the
// rules evaluate without error, with the renew_by alert pending. Last, it
// runs the queries of the Grafana dashboard (checkDashboard).
//
// Vault listens with TLS (vault server -dev -dev-tls) so the job's https
// scheme and tls_config.ca_file are used as shipped, against the CA Vault
// generated.
func TestPrometheusScrapesVault(t *testing.T) {
	promBin, promtool := prometheusBins(t)
	f := startFake(t, 24*time.Hour)
	v := startDevTLSVault(t)
	secret := strings.TrimSpace(readFileString(t, f.SecretFile()))
	v.Secrets = append(v.Secrets, secret)
	t.Cleanup(func() { check(t, f.ClearFaults()) })

	must := func(method, path string, body, out any) {
		t.Helper()
		if err := v.Must(method, path, body, out); err != nil {
			t.Fatal(err)
		}
	}
	// As installPlugin registers it: the file make build names per version.
	must(http.MethodPut, "sys/plugins/catalog/secret/"+pluginName, map[string]any{"sha256": pluginSHA[oldVersion], "command": pluginFile(oldVersion), "version": oldVersion}, nil)
	mounts := []string{"instacart", "instacart-eu"}
	for _, m := range mounts {
		if err := v.Enable(m, pluginName, oldVersion, nil); err != nil {
			t.Fatal(err)
		}
		// Each config write mints (and revokes) a token to verify the credentials.
		must(http.MethodPut, m+"/config", map[string]any{"client_id": fakeClient, "client_secret": secret, "base_url": f.URL, "max_retries": 0}, nil)
		must(http.MethodPut, m+"/roles/shared", map[string]any{"grant_type": "client_credentials", "scopes": "connect:fulfillment"}, nil)
	}
	must(http.MethodPut, "instacart/roles/excl", map[string]any{"grant_type": "client_credentials", "token_reuse": "exclusive"}, nil)
	must(http.MethodPut, "instacart/roles/gone", map[string]any{"grant_type": "client_credentials"}, nil)

	var tokens tokenSet
	read := func(path string) creds {
		t.Helper()
		var c creds
		must(http.MethodGet, path, nil, &c)
		tokens.add(c.Data.AccessToken)
		return c
	}
	var shared creds
	for range 3 {
		shared = read("instacart/creds/shared") // 1 minted, 2 from memory
	}
	read("instacart-eu/creds/shared") // minted
	read("instacart/creds/gone")
	excl := read("instacart/creds/excl")
	renewBy := time.Now().UTC().Add(10 * 24 * time.Hour).Format(time.DateOnly)
	must(http.MethodPut, "instacart/config", map[string]any{"renew_by": renewBy}, nil)

	// The token Prometheus holds: the shipped metrics policy, and the same
	// for the second mount (README: one path per mount), in a 0600 file.
	policy := readFileString(t, filepath.Join(repoRoot, "examples/policies/metrics.hcl"))
	if !strings.Contains(policy, `"instacart/metrics"`) {
		t.Fatalf("examples/policies/metrics.hcl does not name instacart/metrics:\n%s", policy)
	}
	must(http.MethodPut, "sys/policies/acl/instacart-metrics", map[string]any{"policy": policy}, nil)
	must(http.MethodPut, "sys/policies/acl/instacart-eu-metrics", map[string]any{"policy": strings.ReplaceAll(policy, `"instacart/metrics"`, `"instacart-eu/metrics"`)}, nil)
	var created struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	must(http.MethodPost, "auth/token/create", map[string]any{"policies": []string{"instacart-metrics", "instacart-eu-metrics"}, "no_default_policy": true, "period": "768h"}, &created)
	scraper := created.Auth.ClientToken
	if scraper == "" {
		t.Fatal("no token created for Prometheus")
	}
	v.Secrets = append(v.Secrets, scraper)
	work := t.TempDir()
	tokenFile := filepath.Join(work, "vault-token")
	writeFile(t, tokenFile, scraper+"\n") // 0600; Prometheus trims the newline

	// The README's check of that token: vault read -format=raw, the token
	// from the file through the environment (not the command line).
	cli := exec.Command(vaultBin, "read", "-format=raw", "instacart/metrics")
	cli.Env = append(os.Environ(), "VAULT_ADDR="+v.Addr, "VAULT_CACERT="+v.caFile, "VAULT_TOKEN="+strings.TrimSpace(readFileString(t, tokenFile)))
	raw, err := cli.Output()
	if n := strings.Count("\n"+string(raw), "\ninstacart_"); err != nil || n == 0 {
		t.Fatalf("VAULT_TOKEN=<the token file> vault read -format=raw instacart/metrics: %v, %d series lines", err, n)
	}

	// The shipped job, edited as the README says.
	host := strings.TrimPrefix(v.Addr, "https://")
	job := readFileString(t, filepath.Join(repoRoot, "examples/prometheus/prometheus.yml"))
	for _, e := range []struct{ from, to string }{
		{`"vault.example.com:8200"`, strconv.Quote(host)},
		{"/etc/prometheus/vault-ca.pem", v.caFile},
		{"/etc/prometheus/vault-token", tokenFile},
	} {
		if !strings.Contains(job, e.from) {
			t.Fatalf("prometheus.yml no longer holds %s, which the README tells operators to edit", e.from)
		}
		job = strings.ReplaceAll(job, e.from, e.to)
	}
	job = uncommentOtherMount(t, job)
	if !strings.Contains(job, "/v1/instacart-eu/metrics") {
		t.Fatal("prometheus.yml's group for another mount does not name /v1/instacart-eu/metrics")
	}
	rules := filepath.Join(repoRoot, "examples/prometheus/alerts.yml")
	config := fmt.Sprintf("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - %s\n%s", strconv.Quote(rules), job)
	configFile := filepath.Join(work, "prometheus.yml")
	writeFile(t, configFile, config)
	if out, err := exec.Command(promtool, "check", "config", configFile).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}

	port := freePort(t)
	p := startProcess(t, filepath.Join(work, "prometheus.log"), promBin,
		"--config.file="+configFile, "--storage.tsdb.path="+filepath.Join(work, "data"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(port), "--log.level=info")
	prom := &promAPI{base: fmt.Sprintf("http://127.0.0.1:%d", port), proc: p}

	// Both targets up: one per mount, on one Vault, told apart by mount.
	var targets []promTarget
	waitForProm(t, p, 60*time.Second, "both targets up", func() (bool, string) {
		targets = prom.targets(t)
		up := 0
		for _, tg := range targets {
			if tg.Health == "up" {
				up++
			}
		}
		return up == 2 && len(targets) == 2, fmt.Sprint(targets)
	})
	for _, tg := range targets {
		want := "/v1/" + tg.Labels["mount"] + "/metrics"
		if tg.Labels["job"] != "vault-instacart" || tg.Labels["instance"] != host || !strings.Contains(tg.ScrapeURL, want) {
			t.Errorf("target %v: want job vault-instacart, instance %s and a scrape URL with %s", tg.Labels, host, want)
		}
	}

	expiresAt := shared.expiresAt(t)
	cc := `grant_type="client_credentials"`
	for _, c := range []struct {
		query string
		want  map[string]float64 // mount -> value; absent mounts must have no series
	}{
		{`up{job="vault-instacart"}`, map[string]float64{"instacart": 1, "instacart-eu": 1}},
		{`instacart_build_info{version="` + oldVersion + `"}`, map[string]float64{"instacart": 1, "instacart-eu": 1}},
		{`instacart_creds_reads_total{role="shared",source="memory"}`, map[string]float64{"instacart": 2, "instacart-eu": 0}},
		{`instacart_creds_reads_total{role="shared",source="minted"}`, map[string]float64{"instacart": 1, "instacart-eu": 1}},
		{`instacart_creds_reads_total{role="excl",source="minted"}`, map[string]float64{"instacart": 1}},
		{`instacart_creds_reads_total{role="gone",source="minted"}`, map[string]float64{"instacart": 1}},
		{`instacart_token_requests_total{role="@verify",` + cc + `,outcome="minted"}`, map[string]float64{"instacart": 1, "instacart-eu": 1}},
		{`instacart_token_requests_total{role="shared",` + cc + `,outcome="minted"}`, map[string]float64{"instacart": 1, "instacart-eu": 1}},
		{`instacart_token_requests_total{role=""}`, nil},
		{`instacart_revocations_total{outcome="revoked"}`, map[string]float64{"instacart": 1, "instacart-eu": 1}}, // the verify tokens
		{`instacart_shared_tokens{role="shared"}`, map[string]float64{"instacart": 1, "instacart-eu": 1}},
		{`instacart_shared_token_expiry_timestamp_seconds{role="shared",mount="instacart"}`, map[string]float64{"instacart": float64(expiresAt.Unix())}},
		{`instacart_credentials_renew_by_timestamp_seconds`, map[string]float64{"instacart": float64(mustDate(t, renewBy).Unix())}},
		{`instacart_pending_revocations{role="@verify"}`, map[string]float64{"instacart": 0, "instacart-eu": 0}},
		{`instacart_pending_revocations{role="excl"}`, map[string]float64{"instacart": 0}},
		{`instacart_gauge_refresh_errors_total`, map[string]float64{"instacart": 0, "instacart-eu": 0}},
	} {
		prom.expect(t, c.query, c.want)
	}
	// The pending gauge has a series per role (and @verify) per mount: sum them.
	prom.expect(t, `sum by (mount) (instacart_pending_revocations)`, map[string]float64{"instacart": 0, "instacart-eu": 0})

	// A revocation Connect cannot take: the lease ends, the token is queued.
	// Then a role delete: its series go, and (a role write) the gauges are
	// rebuilt at the next scrape, not a minute later.
	faults := make([]map[string]any, 30)
	for i := range faults {
		faults[i] = map[string]any{"status": 503}
	}
	f.InjectFaults(t, pathRevoke, faults...)
	must(http.MethodPut, "sys/leases/revoke", map[string]any{"lease_id": excl.LeaseID}, nil)
	must(http.MethodDelete, "instacart/roles/gone", nil, nil)
	prom.expect(t, `instacart_pending_revocations{role="excl"}`, map[string]float64{"instacart": 1})
	prom.expect(t, `instacart_creds_reads_total{role="gone"}`, nil)
	prom.expect(t, `instacart_token_requests_total{role="gone"}`, nil)
	prom.expect(t, `instacart_creds_reads_total{role="shared",source="memory"}`, map[string]float64{"instacart": 2, "instacart-eu": 0})
	errs := prom.query(t, `instacart_revocations_total{outcome="error",mount="instacart"}`)
	if len(errs) != 1 || errs[0].value < 1 {
		t.Errorf("revocations failing for now: %v, want one series of at least 1", errs)
	}

	// The rules load and evaluate on these series without error; renew_by
	// 10 days out makes its alert pending (it fires after an hour), for
	// the one mount that has it; no target is down.
	waitForProm(t, p, 30*time.Second, "every rule evaluated without error", func() (bool, string) {
		rs := prom.rules(t)
		ok := len(rs) == strings.Count(readFileString(t, rules), "- alert: ")
		for _, r := range rs {
			ok = ok && r.Health == "ok"
		}
		return ok, fmt.Sprint(rs)
	})
	prom.expect(t, `ALERTS{alertname="InstacartCredentialsRenewBy",alertstate="pending"}`, map[string]float64{"instacart": 1})
	prom.expect(t, `ALERTS{alertname="InstacartMetricsTargetDown"}`, nil)

	// The Grafana dashboard's queries on these series (dashboard_test.go);
	// then a token request retried after a 429, for the panels that stay
	// empty until Connect's first one.
	checkDashboard(t, prom, func() {
		check(t, f.ClearFaults())
		must(http.MethodPut, "instacart-eu/config", map[string]any{"max_retries": 2}, nil)
		must(http.MethodPut, "instacart-eu/roles/throttled", map[string]any{"grant_type": "client_credentials"}, nil)
		f.InjectFaults(t, pathToken, map[string]any{"status": 429, "retry_after": "1"})
		read("instacart-eu/creds/throttled")
		// The series was there at 0: the 429 is an increase on instacart-eu only.
		prom.expect(t, `instacart_upstream_retries_total{status="429"}`, map[string]float64{"instacart": 0, "instacart-eu": 1})
	})

	log, err := p.Log()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(log, scraper) || strings.Contains(log, v.Token) {
		t.Error("Prometheus' log holds a Vault token")
	}
	assertNoSecrets(t, "Prometheus' log", log, secret, tokens.all())
	assertNoSecrets(t, "Vault server log (with plugin output)", v.Log(t), secret, tokens.all())
}

// uncommentOtherMount uncomments the target group the job shows, commented,
// for another mount on the same Vault: what the README tells an operator
// with a second mount to do.
func uncommentOtherMount(t *testing.T, job string) string {
	t.Helper()
	lines := strings.Split(job, "\n")
	start := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "# Another mount") })
	if start < 0 {
		t.Fatal("prometheus.yml has no commented group for another mount")
	}
	n := 0
	for i := start + 1; i < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[i]), "# "); i++ {
		lines[i] = strings.Replace(lines[i], "# ", "", 1)
		n++
	}
	if n == 0 {
		t.Fatal("prometheus.yml's group for another mount is empty")
	}
	return strings.Join(lines, "\n")
}

// tlsVault is a dev Vault listening with TLS, and the CA that signed its
// certificate.
type tlsVault struct {
	*vault
	caFile string
}

// startDevTLSVault starts `vault server -dev -dev-tls`: Vault generates a CA
// and a certificate for 127.0.0.1 into a directory of the test's. The
// harness's client trusts that CA once it exists, and nothing else.
func startDevTLSVault(t *testing.T) *tlsVault {
	t.Helper()
	dir := t.TempDir()
	certDir := filepath.Join(dir, "tls")
	if err := os.Mkdir(certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	addr := fmt.Sprintf("https://127.0.0.1:%d", port)
	conf := filepath.Join(dir, "vault.hcl")
	writeFile(t, conf, fmt.Sprintf("plugin_directory = %q\napi_addr = %q\n", pluginDir, addr))
	token := "root-" + stack.RandomHex(12)
	sv := stack.NewVault(vaultBin, addr, filepath.Join(dir, "vault.log"), "server", "-dev", "-dev-tls",
		"-dev-tls-cert-dir="+certDir, "-dev-listen-address=127.0.0.1:"+strconv.Itoa(port),
		"-dev-root-token-id="+token, "-config="+conf, "-log-level=debug")
	sv.Token = token
	caFile := filepath.Join(certDir, "vault-ca.pem")
	sv.Client = &http.Client{Timeout: 5 * time.Minute, Transport: &caTransport{caFile: caFile}}
	if err := sv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sv.Stop)
	if err := sv.Proc.WaitFor(60*time.Second, "Vault to become active", func() bool {
		st, _, err := sv.Call(http.MethodGet, "sys/health", nil, nil)
		return err == nil && st == http.StatusOK
	}); err != nil {
		t.Fatal(sv.Redact(err.Error()))
	}
	return &tlsVault{vault: &vault{Vault: sv, dir: dir}, caFile: caFile}
}

// caTransport trusts only the CA in caFile, read once Vault has written it.
type caTransport struct {
	caFile string
	mu     sync.Mutex
	rt     http.RoundTripper
}

func (c *caTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	if c.rt == nil {
		pem, err := os.ReadFile(c.caFile)
		pool := x509.NewCertPool()
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			c.mu.Unlock()
			return nil, errors.Join(errors.New("Vault's CA is not written yet"), err)
		}
		c.rt = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	rt := c.rt
	c.mu.Unlock()
	return rt.RoundTrip(req)
}

// promAPI queries a Prometheus server's HTTP API.
type promAPI struct {
	base string
	proc *stack.Proc
}

type promSample struct {
	labels map[string]string
	value  float64
}

func (s promSample) String() string { return fmt.Sprintf("%v=%v", s.labels, s.value) }

type promTarget struct {
	Labels    map[string]string `json:"labels"`
	ScrapeURL string            `json:"scrapeUrl"`
	Health    string            `json:"health"`
	LastError string            `json:"lastError"`
}

type promRule struct {
	Name      string `json:"name"`
	Health    string `json:"health"`
	LastError string `json:"lastError"`
}

// get decodes the data of one API call (nil when Prometheus is not up yet).
func (p *promAPI) get(t *testing.T, path string, params url.Values, data any) error {
	t.Helper()
	resp, err := http.Get(p.base + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("%s: HTTP %d: %s", path, resp.StatusCode, body)
	}
	if env.Status != "success" {
		t.Fatalf("%s %v: %s", path, params, env.Error) // a query the API refuses is the test's bug
	}
	return json.Unmarshal(env.Data, data)
}

func (p *promAPI) targets(t *testing.T) []promTarget {
	t.Helper()
	var data struct {
		Active []promTarget `json:"activeTargets"`
	}
	if err := p.get(t, "/api/v1/targets", url.Values{"state": {"active"}}, &data); err != nil {
		return nil
	}
	return data.Active
}

func (p *promAPI) rules(t *testing.T) []promRule {
	t.Helper()
	var data struct {
		Groups []struct {
			Rules []promRule `json:"rules"`
		} `json:"groups"`
	}
	if err := p.get(t, "/api/v1/rules", nil, &data); err != nil {
		return nil
	}
	var out []promRule
	for _, g := range data.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// query is an instant query at the present.
func (p *promAPI) query(t *testing.T, expr string) []promSample {
	t.Helper()
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := p.get(t, "/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		t.Fatalf("query %s: %v", expr, err)
	}
	var out []promSample
	for _, r := range data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("query %s: value %v", expr, r.Value)
		}
		out = append(out, promSample{labels: r.Metric, value: v})
	}
	return out
}

// expect polls expr until it returns exactly one series per mount in want,
// with that value (none at all for an empty want).
func (p *promAPI) expect(t *testing.T, expr string, want map[string]float64) {
	t.Helper()
	var got []promSample
	waitForProm(t, p.proc, 30*time.Second, fmt.Sprintf("%s = %v per mount", expr, want), func() (bool, string) {
		got = p.query(t, expr)
		if len(got) != len(want) {
			return false, fmt.Sprint(got)
		}
		for _, s := range got {
			if w, ok := want[s.labels["mount"]]; !ok || s.value != w {
				return false, fmt.Sprint(got)
			}
		}
		return true, ""
	})
	t.Logf("%s: %v", expr, got)
}

// waitForProm polls cond (bounded, every 100ms) and, on timeout, fails with
// what it last saw and the end of Prometheus' log.
func waitForProm(t *testing.T, p *stack.Proc, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	last := ""
	err := p.WaitFor(timeout, what, func() bool {
		ok, seen := cond()
		last = seen
		return ok
	})
	if err != nil {
		t.Fatalf("%v\nlast seen: %s", err, last)
	}
}
