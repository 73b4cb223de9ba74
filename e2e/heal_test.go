//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// The heal tests: apps behind Vault Proxy (examples/proxy/proxy.hcl as
// shipped) whose token the operator flushes (vault delete
// instacart/cache/<role>, which revokes it at Connect) heal on their next
// Connect call, with no restart: one 401, one fresh read past the Proxy's
// cache, one retry.

// startExampleProxy runs `vault proxy` with examples/proxy/proxy.hcl, its
// auto-auth token appToken, in front of v, and returns its address and log.
func startExampleProxy(t *testing.T, v *vault, appToken string) (addr, logPath string) {
	t.Helper()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "app-token")
	writeFile(t, tokenFile, appToken)
	port := freePort(t)
	cfg := exampleConfig(t, "examples/proxy/proxy.hcl",
		"http://127.0.0.1:8200", v.Addr,
		"/etc/vault-proxy/app-token", tokenFile,
		"127.0.0.1:8100", "127.0.0.1:"+strconv.Itoa(port),
	)
	writeFile(t, filepath.Join(dir, "proxy.hcl"), cfg)
	logPath = filepath.Join(dir, "proxy.log")
	startProcess(t, logPath, vaultBin, "proxy", "-config="+filepath.Join(dir, "proxy.hcl"))
	addr = fmt.Sprintf("http://127.0.0.1:%d", port)
	waitFor(t, 30*time.Second, "the proxy to listen", func() bool {
		resp, err := http.Get(addr + "/v1/sys/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return addr, logPath
}

// flush is the operator's remedy for a leaked shared token: the engine
// revokes the role's token at Connect and mints a new one on the next read.
func (s *clientStack) flush(t *testing.T) {
	t.Helper()
	s.v.vault(t, "delete", "instacart/cache/"+clientRole)
}

// TestClientTokenSourceHealsBehindProxy: a tokensource app reads through
// Vault Proxy and calls Connect; the operator flushes the role; its next
// call gets one 401, and tokensource revokes the dead lease, reads once past
// the Proxy's cache and retries: 200, with no restart. A second app started
// afterwards gets the dead token from the Proxy's cache (revoking a lease
// with its id in the URL does not evict it in Vault v1.21), heals the same
// way, and shares the first app's fresh lease: Vault saw two creds reads in
// all.
func TestClientTokenSourceHealsBehindProxy(t *testing.T) {
	t.Parallel()
	bin := buildTSClient(t)
	s := startClientStackWith(t, time.Hour, "grant_type=client_credentials", "scopes=connect:fulfillment")
	proxy, proxyLog := startExampleProxy(t, s.v, s.appToken)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "heal", clientPath)
	cmd.Env = []string{"VAULT_AGENT_ADDR=" + proxy, "CONNECT_URL=" + s.f.URL, "HOME=" + t.TempDir()} // no Vault token: the Proxy adds its own
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	lines := bufio.NewScanner(stdout)
	for lines.Scan() && lines.Text() != "ready" {
		out.WriteString(lines.Text() + "\n")
	}
	mintsBefore := s.f.Mints(t)
	s.flush(t)
	if _, err := io.WriteString(stdin, "flushed\n"); err != nil {
		t.Fatal(err)
	}
	for lines.Scan() {
		out.WriteString(lines.Text() + "\n")
	}
	werr := cmd.Wait()
	t.Logf("tsclient heal:\n%s%s", out.String(), stderr.String())
	if werr != nil {
		t.Fatalf("tsclient heal: %v", werr)
	}
	output := out.String()
	for key, want := range map[string]string{
		"first":             "200 OK",
		"first attempts":    "200 OK with token 1",
		"second":            "200 OK",
		"second attempts":   "401 Unauthorized with token 1, 200 OK with token 2",
		"newcomer":          "200 OK",
		"newcomer attempts": "401 Unauthorized with token 1, 200 OK with token 2",
		"hook errors":       "0",
	} {
		if got := outputValue(t, output, key); got != want {
			t.Errorf("%s: %q, want %q", key, got, want)
		}
	}
	if m := s.f.Mints(t) - mintsBefore; m != 1 {
		t.Errorf("%d mints after the flush, want 1: the first fresh read's", m)
	}
	// At Vault: the first read, the first app's revocation of the dead lease,
	// then its fresh read; the newcomer's reads were answered by the Proxy.
	var events []string
	dead := ""
	auditedResponses(t, s.audit, func(e auditEntry) bool {
		switch {
		case e.Request.Path == clientPath && e.Response.Secret.LeaseID != "":
			if dead == "" {
				dead = e.Response.Secret.LeaseID
			}
			events = append(events, "creds")
		case strings.HasPrefix(e.Request.Path, "sys/leases/revoke/") && e.Error == "":
			if strings.TrimPrefix(e.Request.Path, "sys/leases/revoke/") == dead {
				events = append(events, "revoke the first lease")
			} else {
				events = append(events, "revoke "+e.Request.Path)
			}
		}
		return false
	})
	want := []string{"creds", "revoke the first lease", "creds", "revoke the first lease"}
	if fmt.Sprint(events) != fmt.Sprint(want) {
		t.Errorf("Vault saw %q, want %q (the newcomer revokes the dead lease too; its reads stay in the Proxy)", events, want)
	}
	if n := len(s.v.leases(t, clientPath+"/")); n != 1 {
		t.Errorf("%d leases left, want 1: the fresh one, which the Proxy holds", n)
	}
	assertNoSecrets(t, "tsclient output", output+stderr.String(), s.f.Secret(), nil)
	assertNoSecrets(t, "proxy log", readFileString(t, proxyLog), s.f.Secret(), nil)
}

// flushDuring returns a function for runWith that waits until the fake has
// answered after users-endpoint calls, then flushes the role.
func (s *clientStack) flushDuring(t *testing.T, after int) func() {
	return func() {
		err := stack.WaitFor(time.Minute, "the app's first calls", func() bool {
			st, err := s.f.Fake.Stats()
			return err == nil && st.Requests["/v2/fulfillment/users"]-s.before.Requests["/v2/fulfillment/users"] >= after
		})
		if err != nil {
			t.Error(err)
			return
		}
		s.flush(t)
	}
}

// TestClientGoHealsBehindProxy runs examples/app-go twice through Vault
// Proxy (VAULT_AGENT_ADDR), with the operator's flush during the first run.
// Every call succeeds in both runs: each run meets the dead token once (the
// first after the flush, the second from the Proxy's cache) and makes one
// retry. The fresh lease stays live: behind a Proxy the example does not
// revoke the lease it shares with every app reading through it.
func TestClientGoHealsBehindProxy(t *testing.T) {
	t.Parallel()
	s := startClientStackWith(t, time.Hour, "grant_type=client_credentials", "scopes=connect:fulfillment")
	proxy, _ := startExampleProxy(t, s.v, s.appToken)
	bin := filepath.Join(t.TempDir(), "app-go")
	if err := stack.GoBuild(context.Background(), filepath.Join(repoRoot, "examples", "app-go"), bin, ".", ""); err != nil {
		t.Fatal(err)
	}
	const calls = 150
	env := []string{"VAULT_AGENT_ADDR=" + proxy}
	first := s.runWith(t, env, s.flushDuring(t, calls/3), repoRoot, bin, clientPath, strconv.Itoa(calls), "5s")
	second := s.runWith(t, env, nil, repoRoot, bin, clientPath, strconv.Itoa(calls), "1s")
	for i, r := range []clientRunResult{first, second} {
		if want := fmt.Sprintf("statuses: map[200 OK:%d]", calls); !strings.Contains(r.output, want) {
			t.Errorf("run %d did not report %q", i+1, want)
		}
		assertNoSecrets(t, "app output", r.output, s.f.Secret(), nil)
	}
	t.Logf("users calls: %d then %d; leases (audit log): %d; mints: %d; leases left: %d",
		first.users, second.users-first.users, second.audited, second.mints, second.leasesAfter)
	if first.users != calls+1 || second.users-first.users != calls+1 {
		t.Errorf("Connect saw %d and %d calls, want %d each: every call once, plus one retry", first.users, second.users-first.users, calls+1)
	}
	if second.audited != 2 || second.mints != 2 {
		t.Errorf("%d creds reads at Vault, %d mints, want 2 and 2: the first read and the one after the flush", second.audited, second.mints)
	}
	if second.leasesAfter != 1 {
		t.Errorf("%d leases left after both runs, want 1: the Proxy's fresh lease, not revoked on exit", second.leasesAfter)
	}
}

// TestClientNodeVaultHealsBehindProxy runs examples/app-node through Vault
// Proxy with the operator's flush during the run: every call succeeds, with
// one retry after the flush and one fresh read.
func TestClientNodeVaultHealsBehindProxy(t *testing.T) {
	t.Parallel()
	dir := nodeExample(t)
	s := startClientStackWith(t, time.Hour, "grant_type=client_credentials", "scopes=connect:fulfillment")
	proxy, _ := startExampleProxy(t, s.v, s.appToken)
	const calls = 150
	r := s.runWith(t, []string{"VAULT_AGENT_ADDR=" + proxy}, s.flushDuring(t, calls/3), dir, "node", "app.js", clientPath, strconv.Itoa(calls), "5")
	if want := fmt.Sprintf(`calls: %d, vault reads: 2, tokens: 2, statuses: {"200":%d}`, calls, calls); !strings.Contains(r.output, want) {
		t.Errorf("the app did not report %q", want)
	}
	if r.users != calls+1 {
		t.Errorf("Connect saw %d calls, want %d: every call once, plus one retry", r.users, calls+1)
	}
	if r.audited != 2 || r.leasesAfter != 1 {
		t.Errorf("%d creds reads at Vault, %d leases left; want 2 and 1 (not revoked on exit behind the Proxy)", r.audited, r.leasesAfter)
	}
	assertNoSecrets(t, "app output", r.output, s.f.Secret(), nil)
}
