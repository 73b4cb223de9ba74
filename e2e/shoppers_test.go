//go:build e2e

package e2e

// Helpers for the many-users tests (issue 20): counting a role's stored
// tokens in Vault's own storage under either layout, tidying until done,
// scraping the metrics, reading creds for many users over keep-alive
// connections, and the plugin process's memory.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// tokenLayouts are where a mount has kept shared tokens, under
// logical/<mount uuid>/: v0.1.0 kept a role's tokens (role-wide and per
// user, "user-<sha256 hex>") under tokens/<role>/; the sharded layout keeps
// per-user tokens under users/<role>/<first two hex chars>/<sha256 hex>.
// A count of a role's stored tokens looks under both, at any depth.
var tokenLayouts = []string{"tokens/", "users/"}

// storedTokenKeys lists, through sys/raw (on in dev servers), every storage
// key under either layout for role in the mount at path, with the layout
// prefix ("tokens/shoppers/user-...").
func storedTokenKeys(t testing.TB, v *vault, mount, role string) []string {
	t.Helper()
	uuid, err := v.MountUUID(mount)
	check(t, err)
	var keys []string
	for _, layout := range tokenLayouts {
		keys = append(keys, rawWalk(t, v, "logical/"+uuid+"/", layout+role+"/")...)
	}
	return keys
}

// rawWalk lists every key under base+dir, recursively, as paths relative to
// base.
func rawWalk(t testing.TB, v *vault, base, dir string) []string {
	t.Helper()
	entries, err := v.RawList(base + dir)
	check(t, err)
	var out []string
	for _, e := range entries {
		if strings.HasSuffix(e, "/") {
			out = append(out, rawWalk(t, v, base, dir+e)...)
			continue
		}
		out = append(out, dir+e)
	}
	return out
}

// tidyTotals is what every POST instacart/tidy of one tidyUntilDone said.
type tidyTotals struct {
	calls, expired, orphaned, retired int
	took                              time.Duration
}

// tidyUntilDone posts instacart/tidy, again while the answer says the pass
// goes on in the background (a pass that outlasts the request), within
// limit, and sums the counts of the passes it saw. A call that joins a pass
// answers that pass's counts so far, so each pass (by started_at) counts
// once, as its last answer gave it.
func tidyUntilDone(t testing.TB, v *vault, limit time.Duration) tidyTotals {
	t.Helper()
	type counts struct{ expired, orphaned, retired int }
	passes := map[string]counts{}
	var tt tidyTotals
	start := time.Now()
	for {
		var out struct {
			Warnings []string `json:"warnings"`
			Data     struct {
				StartedAt string `json:"started_at"`
				Expired   int    `json:"expired_tokens_removed"`
				Orphaned  int    `json:"orphaned_tokens_removed"`
				Retired   int    `json:"retired_credentials_removed"`
			} `json:"data"`
		}
		v.mustAPI(t, http.MethodPost, "instacart/tidy", nil, &out)
		tt.calls++
		passes[out.Data.StartedAt] = counts{out.Data.Expired, out.Data.Orphaned, out.Data.Retired}
		background := strings.Contains(strings.Join(out.Warnings, "\n"), "goes on in the background")
		t.Logf("POST instacart/tidy #%d (pass started %s): %d expired, %d orphaned, %d retired removed so far; warnings %q", tt.calls, out.Data.StartedAt, out.Data.Expired, out.Data.Orphaned, out.Data.Retired, out.Warnings)
		if !background {
			for _, c := range passes {
				tt.expired += c.expired
				tt.orphaned += c.orphaned
				tt.retired += c.retired
			}
			tt.took = time.Since(start)
			return tt
		}
		if time.Since(start) > limit {
			t.Fatalf("tidy still going on in the background after %d calls in %s", tt.calls, time.Since(start).Round(time.Second))
		}
	}
}

// scrapeMetrics reads instacart/metrics?format=prometheus with the root token
// and parses it.
func scrapeMetrics(t testing.TB, v *vault) metricSet {
	t.Helper()
	m, err := scrapeMetricsErr(v, v.Client)
	check(t, err)
	return m
}

// scrapeMetricsErr is scrapeMetrics for a goroutine: failures are returned.
func scrapeMetricsErr(v *vault, client *http.Client) (metricSet, error) {
	req, err := http.NewRequest(http.MethodGet, v.Addr+"/v1/instacart/metrics?format=prometheus", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", v.Token)
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping instacart/metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scraping instacart/metrics: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping instacart/metrics: HTTP %d: %s", resp.StatusCode, v.Redact(string(body)))
	}
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("the scrape is not Prometheus text: %w", err)
	}
	return metricSet(families), nil
}

// sharedTokensGauge is instacart_shared_tokens{role} in m (0 when absent).
func sharedTokensGauge(m metricSet, role string) float64 {
	got, _ := m.value("instacart_shared_tokens", map[string]string{"role": role})
	return got
}

// keepAliveClient is an HTTP client that keeps up to conns connections to
// Vault open, as a load of many readers would.
func keepAliveClient(conns int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost, tr.MaxConnsPerHost = conns, conns, conns
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}
}

// userCreds is what one user's read of creds/<role> returned.
type userCreds struct {
	token     string
	expiresAt time.Time
}

// readUserCreds is POST instacart/creds/<role> {"user_id": user} with the
// root token over client.
func readUserCreds(v *vault, client *http.Client, role, user string) (userCreds, error) {
	body, _ := json.Marshal(map[string]string{"user_id": user})
	req, err := http.NewRequest(http.MethodPost, v.Addr+"/v1/instacart/creds/"+role, bytes.NewReader(body))
	if err != nil {
		return userCreds{}, err
	}
	req.Header.Set("X-Vault-Token", v.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return userCreds{}, fmt.Errorf("creds/%s: %w", role, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return userCreds{}, fmt.Errorf("creds/%s: %w", role, err)
	}
	if resp.StatusCode != http.StatusOK {
		return userCreds{}, fmt.Errorf("creds/%s: HTTP %d: %s", role, resp.StatusCode, v.Redact(strings.TrimSpace(string(raw))))
	}
	var c creds
	if err := json.Unmarshal(raw, &c); err != nil {
		return userCreds{}, fmt.Errorf("creds/%s: decoding: %w", role, err)
	}
	at, err := time.Parse(time.RFC3339, c.Data.ExpiresAt)
	if err != nil || c.Data.AccessToken == "" || c.Data.UserID != user {
		return userCreds{}, fmt.Errorf("creds/%s: an answer without a token, a valid expires_at (%q) or the user's id", role, c.Data.ExpiresAt)
	}
	return userCreds{token: c.Data.AccessToken, expiresAt: at}, nil
}

// readManyUsers has clients readers read creds/<role> once for each of
// users, over keep-alive connections. It returns each user's answer (zero
// when the read failed), the number of failed reads and the first failure.
func readManyUsers(v *vault, role string, users []string, clients int) (out []userCreds, failed int, firstErr error) {
	client := keepAliveClient(clients)
	defer client.CloseIdleConnections()
	out = make([]userCreds, len(users))
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(users) {
					return
				}
				c, err := readUserCreds(v, client, role, users[i])
				if err != nil {
					mu.Lock()
					failed++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				out[i] = c
			}
		}()
	}
	wg.Wait()
	return out, failed, firstErr
}

// pluginChildPID is the process running the plugin file binary whose parent
// is v's server (Vault starts one process per plugin version and serves
// every mount of it from there).
func pluginChildPID(t testing.TB, v *vault, binary string) int {
	t.Helper()
	var pid int
	waitFor(t, 30*time.Second, "the plugin process of "+binary, func() bool {
		procs, err := stack.Procs(func(argv0 string) bool { return argv0 == binary })
		check(t, err)
		for _, p := range procs {
			if p.PPid == v.Proc.Pid() {
				pid = p.Pid
				return true
			}
		}
		return false
	})
	return pid
}

// rssSampler records a process's peak resident memory until stopped.
type rssSampler struct {
	pid     int
	peak    atomic.Int64
	samples atomic.Int64
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func sampleRSS(pid int, every time.Duration) *rssSampler {
	s := &rssSampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			if n, err := stack.RSSBytes(pid); err == nil {
				s.samples.Add(1)
				if n > s.peak.Load() {
					s.peak.Store(n)
				}
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// finish stops sampling (once; it may be called again) and returns the
// peak and the number of samples.
func (s *rssSampler) finish() (peak int64, samples int) {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	return s.peak.Load(), int(s.samples.Load())
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// freshMetrics scrapes instacart/metrics with gauges rebuilt from storage
// now: the engine rebuilds them at most once a minute, or at the first
// scrape after a role write, so it writes a role of its own first.
func freshMetrics(t testing.TB, v *vault) metricSet {
	t.Helper()
	v.mustAPI(t, http.MethodPost, "instacart/roles/metrics-probe", map[string]any{"grant_type": "client_credentials"}, nil)
	return scrapeMetrics(t, v)
}

// firstRollbackTick is when Vault first calls the mounts' periodic functions:
// a minute after its rollback manager started (then every minute). The
// engine's first periodic call starts a tidy pass of its own, which takes
// whatever has expired by then; a test that counts what its own tidy calls
// remove must make them before that, or have nothing expire until after.
func firstRollbackTick(t testing.TB, v *vault) time.Time {
	t.Helper()
	for _, line := range strings.Split(v.Log(t), "\n") {
		if !strings.Contains(line, "rollback: starting rollback manager") {
			continue
		}
		stamp, _, _ := strings.Cut(line, " ")
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil {
			t.Fatalf("the rollback manager's start in Vault's log: %v", err)
		}
		return at.Add(time.Minute)
	}
	t.Fatal("Vault's log does not say when its rollback manager started")
	return time.Time{}
}

// periodicTidyNote explains a short count when the tidy calls began after
// Vault's first rollback tick, whose periodic pass may have removed the rest.
func periodicTidyNote(tick, tidyStart time.Time) string {
	if tidyStart.Before(tick) {
		return ""
	}
	return fmt.Sprintf(" (the tidy calls began %s after Vault's first rollback tick: the engine's own periodic pass may have removed the difference; the machine was too slow for this test's timing)", tidyStart.Sub(tick).Round(100*time.Millisecond))
}
