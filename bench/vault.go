package main

// Process harness: builds the plugins, runs the Connect fake, a dev Vault and
// Vault Agent as child processes. Adapted from e2e/harness_test.go, which is
// test-only code and cannot be imported.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	pluginName   = "vault-plugin-secrets-instacart"
	pluginVer    = "v0.1.0-bench"
	noopName     = "vault-plugin-secrets-noop"
	oauthappName = "vault-plugin-secrets-oauthapp"
	module       = "github.com/instacart-vault/vault-plugin-secrets-instacart"
	oauthappPkg  = "github.com/puppetlabs/vault-plugin-secrets-oauthapp/v3/cmd/vault-plugin-secrets-oauthapp"
	fakeClientID = "bench-client"
)

// binaries are the build outputs the benchmark runs.
type binaries struct {
	pluginDir string
	fake      string
	// oauthappErr says why the peer plugin is unavailable (nil when built).
	oauthappErr error
}

// buildAll compiles our plugin, the no-op plugin and the fake into dir, and
// the oauthapp plugin from its own module unless skipped. A failed oauthapp
// build only disables its scenario.
// A prebuilt plugin binary (pluginBin) replaces the build of ours, e.g. to
// measure a release build or a profiling build; it must report pluginVer.
func buildAll(ctx context.Context, repo, dir, pluginBin string, withOauthapp bool) (*binaries, error) {
	b := &binaries{pluginDir: filepath.Join(dir, "plugins"), fake: filepath.Join(dir, "connect-fake")}
	builds := []struct{ out, pkg, ldflags string }{
		{filepath.Join(b.pluginDir, noopName), "./bench/noopplugin", ""},
		{b.fake, "./cmd/connect-fake", ""},
	}
	if pluginBin == "" {
		builds = append(builds, struct{ out, pkg, ldflags string }{filepath.Join(b.pluginDir, pluginName), "./cmd/" + pluginName, "-X " + module + "/version.version=" + pluginVer})
	} else if err := copyFile(pluginBin, filepath.Join(b.pluginDir, pluginName)); err != nil {
		return nil, err
	}
	for _, bd := range builds {
		if err := goBuild(ctx, repo, bd.out, bd.pkg, bd.ldflags); err != nil {
			return nil, err
		}
	}
	if !withOauthapp {
		b.oauthappErr = errors.New("skipped in -smoke mode")
		return b, nil
	}
	// The peer plugin's dependency graph lives in bench/oauthapp/go.mod so the
	// root module never gains its dependencies.
	if err := goBuild(ctx, filepath.Join(repo, "bench", "oauthapp"), filepath.Join(b.pluginDir, oauthappName), oauthappPkg, ""); err != nil {
		b.oauthappErr = err
	}
	return b, nil
}

func goBuild(ctx context.Context, dir, out, pkg, ldflags string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", strings.TrimSpace("-s -w "+ldflags), "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %w\n%s", pkg, err, lastLines(string(out), 15))
	}
	return nil
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	defer src.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return fmt.Errorf("plugin dir: %w", err)
	}
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return fmt.Errorf("copying plugin binary: %w", err)
	}
	return dst.Close()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("checksum: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("checksum %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// waitFor polls cond every 100ms until it holds or timeout passes.
func waitFor(timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// proc is a child process whose output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProc(name, logPath string, env []string, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	p := &proc{name: name, cmd: exec.Command(bin, args...), log: logPath, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = childAttr()
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() { _ = p.cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

// stop asks the process to exit (SIGTERM), then kills it if it lingers.
func (p *proc) stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail is the end of the process log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	return lastLines(string(b), 20)
}

// ---------------------------------------------------------------------------
// The Connect fake.

type fake struct {
	*proc
	URL    string
	secret string // never printed
	client *http.Client
}

func startFake(bin, dir string, latency time.Duration) (*fake, error) {
	secretFile := filepath.Join(dir, "fake-secret")
	addrFile := filepath.Join(dir, "fake-url")
	p, err := startProc("connect-fake", filepath.Join(dir, "fake.log"), nil, bin,
		"-client-id", fakeClientID, "-secret-file", secretFile, "-addr-file", addrFile, "-latency", latency.String())
	if err != nil {
		return nil, err
	}
	f := &fake{proc: p, client: &http.Client{Timeout: 30 * time.Second}}
	if err := waitFor(10*time.Second, "the Connect fake", func() bool {
		b, err := os.ReadFile(addrFile)
		f.URL = strings.TrimSpace(string(b))
		return err == nil && f.URL != "" && !p.exited()
	}); err != nil {
		p.stop()
		return nil, fmt.Errorf("%w\n%s", err, p.tail())
	}
	// The fake creates the secret file before it listens.
	b, err := os.ReadFile(secretFile)
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("reading the fake's secret file: %w", err)
	}
	f.secret = strings.TrimSpace(string(b))
	return f, nil
}

type fakeStats struct {
	Requests    map[string]int `json:"requests"`
	Mints       int            `json:"mints"`
	Revocations int            `json:"revocations"`
}

func (f *fake) admin(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, f.URL+path, rd)
	if err != nil {
		return fmt.Errorf("fake %s %s: %w", method, path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		return fmt.Errorf("fake %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("fake %s %s: HTTP %d", method, path, resp.StatusCode)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("fake %s %s: decoding: %w", method, path, err)
		}
	}
	return nil
}

func (f *fake) stats() (fakeStats, error) {
	var st fakeStats
	err := f.admin(http.MethodGet, "/_fake/stats", nil, &st)
	return st, err
}

func (f *fake) reset() error { return f.admin(http.MethodPost, "/_fake/reset", nil, nil) }

func (f *fake) setLatency(d time.Duration) error {
	return f.admin(http.MethodPost, "/_fake/latency", map[string]int{"milliseconds": int(d / time.Millisecond)}, nil)
}

// ---------------------------------------------------------------------------
// Vault.

type vault struct {
	*proc
	Addr   string
	token  string // dev root token, random per run; never printed
	client *http.Client
	// secrets are scrubbed from any API error text.
	secrets []string
}

// startDevVault runs `vault server -dev` on a free loopback port with the
// given plugin directory and a random root token.
func startDevVault(bin, pluginDir, dir string) (*vault, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	v := &vault{Addr: fmt.Sprintf("http://127.0.0.1:%d", port), token: "root-" + randomHex(12),
		client: &http.Client{Timeout: 5 * time.Minute}}
	v.secrets = []string{v.token}
	hcl := fmt.Sprintf("plugin_directory = %q\napi_addr = %q\n", pluginDir, v.Addr)
	if err := os.WriteFile(filepath.Join(dir, "vault.hcl"), []byte(hcl), 0o600); err != nil {
		return nil, fmt.Errorf("vault config: %w", err)
	}
	v.proc, err = startProc("vault", filepath.Join(dir, "vault.log"), []string{"VAULT_ADDR=" + v.Addr}, bin,
		"server", "-dev", "-dev-listen-address=127.0.0.1:"+strconv.Itoa(port), "-dev-root-token-id="+v.token,
		"-config="+filepath.Join(dir, "vault.hcl"), "-log-level=warn")
	if err != nil {
		return nil, err
	}
	if err := waitFor(60*time.Second, "Vault to become active", func() bool {
		st, _, err := v.call(http.MethodGet, "sys/health", nil, nil)
		return err == nil && st == http.StatusOK && !v.exited()
	}); err != nil {
		v.stop()
		return nil, fmt.Errorf("%w\n%s", err, v.tail())
	}
	return v, nil
}

// call is one HTTP API request with the root token; it returns the status
// and the raw body (for error messages: callers scrub it with redact).
func (v *vault) call(method, path string, body, out any) (int, string, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, "", fmt.Errorf("%s %s: encoding body: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, v.Addr+"/v1/"+path, rd)
	if err != nil {
		return 0, "", fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("X-Vault-Token", v.token)
	resp, err := v.client.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, "", fmt.Errorf("%s %s: decoding response: %w", method, path, err)
		}
	}
	return resp.StatusCode, string(raw), nil
}

// must is call that fails on any non-2xx status, with secrets scrubbed from
// the error.
func (v *vault) must(method, path string, body, out any) error {
	st, raw, err := v.call(method, path, body, out)
	if err != nil {
		return err
	}
	if st >= 300 {
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, st, v.redact(strings.TrimSpace(raw)))
	}
	return nil
}

func (v *vault) redact(s string) string {
	for _, sec := range v.secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
}

// version is the server's version string from sys/seal-status.
func (v *vault) version() string {
	var out struct {
		Version string `json:"version"`
	}
	if err := v.must(http.MethodGet, "sys/seal-status", nil, &out); err != nil {
		return "unknown"
	}
	return out.Version
}

// register adds a plugin to the catalog by checksum (and version, when set).
func (v *vault) register(pluginDir, name, version string) error {
	sum, err := fileSHA256(filepath.Join(pluginDir, name))
	if err != nil {
		return err
	}
	body := map[string]any{"sha256": sum, "command": name}
	if version != "" {
		body["version"] = version
	}
	if err := v.must(http.MethodPut, "sys/plugins/catalog/secret/"+name, body, nil); err != nil {
		return fmt.Errorf("registering %s: %w", name, err)
	}
	return nil
}

func (v *vault) enable(path, typ, version string, options map[string]string) error {
	body := map[string]any{"type": typ}
	if version != "" {
		body["config"] = map[string]any{"plugin_version": version}
	}
	if options != nil {
		body["options"] = options
	}
	if err := v.must(http.MethodPost, "sys/mounts/"+path, body, nil); err != nil {
		return fmt.Errorf("enabling %s at %s/: %w", typ, path, err)
	}
	return nil
}

// leaseCount lists the leases under prefix (which ends in "/").
func (v *vault) leaseCount(prefix string) (int, error) {
	var out struct {
		Data struct {
			Keys []string `json:"keys"`
		} `json:"data"`
	}
	st, raw, err := v.call("LIST", "sys/leases/lookup/"+prefix, nil, &out)
	switch {
	case err != nil:
		return 0, err
	case st == http.StatusNotFound:
		return 0, nil
	case st >= 300:
		return 0, fmt.Errorf("LIST sys/leases/lookup/%s: HTTP %d: %s", prefix, st, v.redact(raw))
	}
	return len(out.Data.Keys), nil
}

// revokePrefix revokes every lease under prefix and waits for it. The API
// refuses a trailing slash but Vault adds one itself, so "creds/bench" does
// not also match "creds/bench-excl".
func (v *vault) revokePrefix(prefix string) error {
	return v.must(http.MethodPut, "sys/leases/revoke-prefix/"+strings.TrimSuffix(prefix, "/"), map[string]any{"sync": true}, nil)
}

// ---------------------------------------------------------------------------
// Vault Agent, with its lease cache in front of the API.

type agent struct {
	*proc
	Addr string
}

// startAgent runs `vault agent` with auto-auth from a token file, the lease
// cache and an API proxy that injects the auto-auth token.
func startAgent(bin string, v *vault, dir, token string) (*agent, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(dir, "agent-token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return nil, fmt.Errorf("agent token file: %w", err)
	}
	hcl := fmt.Sprintf(`
vault {
  address = %q
}
auto_auth {
  method "token_file" {
    config = {
      token_file_path = %q
    }
  }
}
cache {}
api_proxy {
  use_auto_auth_token = true
}
listener "tcp" {
  address     = "127.0.0.1:%d"
  tls_disable = true
}
`, v.Addr, tokenFile, port)
	conf := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(conf, []byte(hcl), 0o600); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	p, err := startProc("vault agent", filepath.Join(dir, "agent.log"), nil, bin, "agent", "-config="+conf, "-log-level=info")
	if err != nil {
		return nil, err
	}
	a := &agent{proc: p, Addr: fmt.Sprintf("http://127.0.0.1:%d", port)}
	// Ready once a proxied request succeeds with the auto-auth token.
	if err := waitFor(30*time.Second, "Vault Agent auto-auth", func() bool {
		resp, err := http.Get(a.Addr + "/v1/auth/token/lookup-self")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && !p.exited()
	}); err != nil {
		p.stop()
		return nil, fmt.Errorf("%w\n%s", err, p.tail())
	}
	return a, nil
}

// ---------------------------------------------------------------------------
// Plugin process memory.

// findPluginPID scans /proc for the process running binary.
func findPluginPID(binary string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("scanning /proc: %w", err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if argv0, _, _ := bytes.Cut(b, []byte{0}); string(argv0) == binary {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process runs %s", binary)
}

// rssBytes is VmRSS of pid.
func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading status of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing VmRSS %q: %w", rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
