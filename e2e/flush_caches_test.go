//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// leakedTokenHeading is the README section an operator follows when a
// shared token leaked.
const leakedTokenHeading = "### A leaked shared token"

// TestFlushReachesProxyAndAgent: an app reading through Vault Proxy
// (examples/proxy) and one reading the file Vault Agent renders
// (examples/agent), both authenticated with the shipped app policy, keep
// calling Connect while an operator with the shipped operator policy follows
// the README's "A leaked shared token" word for word. First the flush alone:
// both apps move to the new token within the role's ttl, as the README says,
// with nothing restarted, because their caches' next renewal of the flushed
// token's lease is refused. Then the flush and Proxy's cache clear: the app
// behind the Proxy moves at once, the one behind Agent within the ttl.
func TestFlushReachesProxyAndAgent(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run the README's cache clear")
	}
	blocks := readmeSection(t, leakedTokenHeading)
	if len(blocks) != 2 || !strings.Contains(blocks[0], "vault delete instacart/cache/fulfillment") || !strings.Contains(blocks[1], "/proxy/v1/cache-clear") {
		t.Fatalf("the README's %q no longer has the flush, then Proxy's cache clear:\n%s", leakedTokenHeading, strings.Join(blocks, "---\n"))
	}
	// The bound the README gives for Proxy and Agent, and the second or so
	// it adds for a read and a render.
	const ttl, readAndRender = 30 * time.Second, 2 * time.Second

	f := startFake(t, 24*time.Hour) // tokens outlive the test: only the flush moves the caches
	v := startDevVault(t)
	v.installPlugin(t, f)
	dir := t.TempDir()
	audit := filepath.Join(dir, "audit.log")
	v.vault(t, "audit", "enable", "file", "file_path="+audit)
	v.vault(t, "write", "instacart/roles/fulfillment", "grant_type=client_credentials", "scopes=connect:fulfillment", fmt.Sprintf("ttl=%ds", int(ttl.Seconds())))
	appToken := v.appToken(t)
	v.vault(t, "policy", "write", "instacart-operator", filepath.Join(repoRoot, "examples/policies/operator.hcl"))
	operator := strings.TrimSpace(v.vault(t, "token", "create", "-policy=instacart-operator", "-field=token"))
	v.Secrets = append(v.Secrets, appToken, operator)

	// Vault Agent, rendering the token to a file.
	agentToken, rendered := filepath.Join(dir, "agent-app-token"), filepath.Join(dir, "instacart-token")
	writeFile(t, agentToken, appToken)
	writeFile(t, filepath.Join(dir, "agent.hcl"), exampleConfig(t, "examples/agent/agent.hcl",
		"http://127.0.0.1:8200", v.Addr,
		"/etc/vault-agent/app-token", agentToken,
		"/etc/vault-agent/instacart-token.ctmpl", filepath.Join(repoRoot, "examples/agent/instacart-token.ctmpl"),
		"/run/app/instacart-token", rendered,
	))
	agent := startProcess(t, filepath.Join(dir, "agent.log"), vaultBin, "agent", "-config="+filepath.Join(dir, "agent.hcl"))

	// Vault Proxy, caching reads.
	proxyToken, port := filepath.Join(dir, "proxy-app-token"), freePort(t)
	proxyAddr := "127.0.0.1:" + strconv.Itoa(port)
	writeFile(t, proxyToken, appToken)
	writeFile(t, filepath.Join(dir, "proxy.hcl"), exampleConfig(t, "examples/proxy/proxy.hcl",
		"http://127.0.0.1:8200", v.Addr,
		"/etc/vault-proxy/app-token", proxyToken,
		"127.0.0.1:8100", proxyAddr,
	))
	proxy := startProcess(t, filepath.Join(dir, "proxy.log"), vaultBin, "proxy", "-config="+filepath.Join(dir, "proxy.hcl"))

	// The two apps: each takes its token where its cache puts it and calls
	// Connect with it, four times a second.
	viaProxy := startConnectApp(t, f, "the app behind Vault Proxy", func() string {
		resp, err := http.Get("http://" + proxyAddr + "/v1/instacart/creds/fulfillment") // no Vault token: the Proxy adds its own
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		var out struct {
			Data struct {
				AccessToken string `json:"access_token"`
			} `json:"data"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return out.Data.AccessToken
	})
	viaAgent := startConnectApp(t, f, "the app behind Vault Agent", func() string {
		b, _ := os.ReadFile(rendered)
		return string(b)
	})

	first := viaProxy.waitWorking(t, 30*time.Second, nil)
	if tok := viaAgent.waitWorking(t, 30*time.Second, nil); tok != first {
		t.Fatal("the apps behind Agent and Proxy were handed different tokens of one shared role")
	}
	// Both caches renewed their leases (they do at once) and were not refused.
	waitFor(t, 30*time.Second, "Agent and Proxy to renew their leases", func() bool { return renewals(t, audit, true) >= 2 })
	if n := renewals(t, audit, false); n != 0 {
		t.Fatalf("%d renewals were refused before the flush", n)
	}

	sh := &readmeShell{v: v, token: operator, repl: strings.NewReplacer("127.0.0.1:8100", proxyAddr)}

	// 1. The flush alone: both caches move at their next renewal.
	flushed := time.Now()
	sh.mustRun(t, blocks[0])
	if st := f.Users(t, first); st != http.StatusUnauthorized {
		t.Fatalf("the flushed token: Connect answered %d, want 401", st)
	}
	seen := []string{first}
	second := viaProxy.waitWorking(t, ttl+10*time.Second, seen)
	proxyMoved := viaProxy.movedAt(second).Sub(flushed)
	if tok := viaAgent.waitWorking(t, ttl+10*time.Second, seen); tok != second {
		t.Error("after the flush, the apps behind Agent and Proxy were handed different tokens")
	}
	agentMoved := viaAgent.movedAt(second).Sub(flushed)
	t.Logf("after the flush: the app behind Proxy moved to the new token in %v, behind Agent in %v (role ttl %v)", proxyMoved.Round(time.Millisecond), agentMoved.Round(time.Millisecond), ttl)
	for what, d := range map[string]time.Duration{"Proxy": proxyMoved, "Agent": agentMoved} {
		if d > ttl+readAndRender {
			t.Errorf("the app behind %s moved to the new token %v after the flush, beyond the README's bound (the role's ttl, %v)", what, d.Round(time.Millisecond), ttl)
		}
	}
	// Each cache's renewal was refused (Vault's audit log records the
	// refusal as "invalid request"; Agent logs the engine's sentence, Proxy
	// only at debug level).
	if n := renewals(t, audit, false); n < 2 {
		t.Errorf("%d renewals refused after the flush, want at least one by each cache: they moved for another reason", n)
	}
	if !strings.Contains(readFileString(t, filepath.Join(dir, "agent.log")), "read creds/fulfillment again") {
		t.Error("Agent's log does not show the engine's refusal")
	}

	// 2. The flush and Proxy's cache clear: Proxy moves at once.
	flushed = time.Now()
	sh.mustRun(t, blocks[0])
	sh.mustRun(t, blocks[1])
	cleared := time.Now()
	seen = append(seen, second)
	third := viaProxy.waitWorking(t, ttl+10*time.Second, seen)
	if d := viaProxy.movedAt(third).Sub(cleared); d > readAndRender {
		t.Errorf("the app behind Proxy moved to the new token %v after the cache clear, want at once", d.Round(time.Millisecond))
	}
	if tok := viaAgent.waitWorking(t, ttl+10*time.Second, seen); tok != third {
		t.Error("after the second flush, the apps behind Agent and Proxy were handed different tokens")
	}
	if d := viaAgent.movedAt(third).Sub(flushed); d > ttl+readAndRender {
		t.Errorf("the app behind Agent moved to the new token %v after the second flush, beyond the README's bound (the role's ttl, %v)", d.Round(time.Millisecond), ttl)
	}

	if agent.Exited() || proxy.Exited() {
		t.Error("Agent or Proxy exited: they must recover without a restart")
	}
	viaProxy.stop()
	viaAgent.stop()
	for _, a := range []*connectApp{viaProxy, viaAgent} {
		if n := a.failuresAfter(third); n != 0 {
			t.Errorf("%s got %d failures after it moved to the current token", a.name, n)
		}
	}
	tokens := append(seen, third)
	assertNoSecrets(t, "agent log", readFileString(t, filepath.Join(dir, "agent.log")), f.Secret(), tokens)
	assertNoSecrets(t, "proxy log", readFileString(t, filepath.Join(dir, "proxy.log")), f.Secret(), tokens)
}

// connectApp is an app that keeps calling Connect with the token its cache
// holds, and records what Connect answered.
type connectApp struct {
	name string
	done chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	calls []appCall
}

type appCall struct {
	at     time.Time
	token  string
	status int // Connect's answer; 0 when there was no token to send
}

func startConnectApp(t *testing.T, f *fake, name string, token func() string) *connectApp {
	a := &connectApp{name: name, done: make(chan struct{})}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			c := appCall{token: strings.TrimSpace(token())}
			if c.token != "" {
				c.status, _ = f.Fake.Users(c.token)
			}
			c.at = time.Now()
			a.mu.Lock()
			a.calls = append(a.calls, c)
			a.mu.Unlock()
			select {
			case <-a.done:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(a.stop)
	return a
}

func (a *connectApp) stop() {
	select {
	case <-a.done:
	default:
		close(a.done)
	}
	a.wg.Wait()
}

// waitWorking waits until Connect accepts the app's token, one not in old,
// and returns it.
func (a *connectApp) waitWorking(t *testing.T, timeout time.Duration, old []string) string {
	t.Helper()
	var tok string
	waitFor(t, timeout, a.name+" to call Connect with a new token", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		if n := len(a.calls); n > 0 {
			if c := a.calls[n-1]; c.status == http.StatusOK && !slices.Contains(old, c.token) {
				tok = c.token
				return true
			}
		}
		return false
	})
	return tok
}

// movedAt is when Connect first accepted tok from the app.
func (a *connectApp) movedAt(tok string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.calls {
		if c.token == tok && c.status == http.StatusOK {
			return c.at
		}
	}
	return time.Time{}
}

// failuresAfter counts the calls, after the app first used tok, that were
// not accepted.
func (a *connectApp) failuresAfter(tok string) int {
	since := a.movedAt(tok)
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, c := range a.calls {
		if c.at.After(since) && c.status != http.StatusOK {
			n++
		}
	}
	return n
}

// renewals counts the lease renewals Vault answered, accepted or refused, as
// Agent and Proxy send them (the lease id in the body).
func renewals(t *testing.T, auditPath string, accepted bool) int {
	t.Helper()
	return auditedResponses(t, auditPath, func(e auditEntry) bool {
		return e.Request.Path == "sys/leases/renew" && (e.Error == "") == accepted
	})
}
