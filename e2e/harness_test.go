//go:build e2e

// Package e2e drives the plugin inside a real Vault server (.bin/vault, built
// from source by scripts/vault.sh) through the vault CLI and the HTTP API,
// against the Connect fake running as its own process.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	pluginName = "vault-plugin-secrets-instacart"
	oldVersion = "v0.1.0"
	newVersion = "v0.2.0"
	module     = "github.com/instacart-vault/vault-plugin-secrets-instacart"
	fakeClient = "e2e-client"
)

var (
	repoRoot  string
	vaultBin  string
	fakeBin   string
	pluginDir string
	// pluginSHA is the checksum of each built plugin version.
	pluginSHA = map[string]string{}
)

// TestMain builds the plugin (two versions, for upgrade tests) and the fake.
// A missing Vault binary is a failure, never a skip: make test builds it first.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	wd, _ := os.Getwd()
	repoRoot = filepath.Dir(wd)
	vaultBin = os.Getenv("VAULT_BIN")
	if vaultBin == "" {
		vaultBin = filepath.Join(repoRoot, ".bin", "vault")
	}
	if _, err := os.Stat(vaultBin); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: no Vault binary at %s: run `make vault` (make test does it for you)\n", vaultBin)
		return 1
	}
	tmp, err := os.MkdirTemp("", "instacart-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	pluginDir = filepath.Join(tmp, "plugins")
	fakeBin = filepath.Join(tmp, "connect-fake")
	builds := []struct{ out, pkg, ldflags string }{
		{filepath.Join(pluginDir, pluginName), "./cmd/" + pluginName, "-X " + module + "/version.version=" + oldVersion},
		{filepath.Join(pluginDir, pluginName+"-"+newVersion), "./cmd/" + pluginName, "-X " + module + "/version.version=" + newVersion},
		{fakeBin, "./cmd/connect-fake", ""},
	}
	for _, b := range builds {
		cmd := exec.Command("go", "build", "-ldflags", "-s -w "+b.ldflags, "-o", b.out, b.pkg)
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building %s: %v\n%s", b.pkg, err, out)
			return 1
		}
	}
	for v, file := range map[string]string{oldVersion: pluginName, newVersion: pluginName + "-" + newVersion} {
		sum, err := fileSHA256(filepath.Join(pluginDir, file))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		pluginSHA[v] = sum
	}
	return m.Run()
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// The Connect fake, as a process.

type fake struct {
	URL    string
	secret string
	dir    string
	cmd    *exec.Cmd
	log    *bytes.Buffer
}

// startFake runs cmd/connect-fake on a free loopback port with a fresh secret.
func startFake(t testing.TB, lifetime time.Duration) *fake {
	t.Helper()
	dir := t.TempDir()
	f := &fake{secret: "e2e-secret-" + randomHex(16), dir: dir, log: &bytes.Buffer{}}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte(f.secret), 0o600); err != nil {
		t.Fatal(err)
	}
	addrFile := filepath.Join(dir, "url")
	f.cmd = exec.Command(fakeBin, "-client-id", fakeClient, "-secret-file", filepath.Join(dir, "secret"),
		"-addr-file", addrFile, "-token-lifetime", lifetime.String())
	f.cmd.Stdout, f.cmd.Stderr = f.log, f.log
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.cmd.Process.Kill(); _ = f.cmd.Wait() })
	waitFor(t, 10*time.Second, "the Connect fake", func() bool {
		b, err := os.ReadFile(addrFile)
		f.URL = strings.TrimSpace(string(b))
		return err == nil && f.URL != ""
	})
	return f
}

// SecretFile is where the fake's client secret lives, for `client_secret=@file`.
func (f *fake) SecretFile() string { return filepath.Join(f.dir, "secret") }

func (f *fake) do(t testing.TB, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, f.URL+path, rd)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("fake %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

type fakeStats struct {
	Requests    map[string]int `json:"requests"`
	Mints       int            `json:"mints"`
	Revocations int            `json:"revocations"`
}

func (f *fake) Stats(t testing.TB) fakeStats {
	t.Helper()
	var st fakeStats
	f.do(t, http.MethodGet, "/_fake/stats", nil, &st)
	return st
}

func (f *fake) Mints(t testing.TB) int { t.Helper(); return f.Stats(t).Mints }

// Users calls POST /v2/fulfillment/users with the token: 200 = it works.
func (f *fake) Users(t testing.TB, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.URL+"/v2/fulfillment/users",
		strings.NewReader(`{"user_id":"johnsmith6000","first_name":"john","last_name":"smith","phone_number":"800-555-0100"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (f *fake) Authorize(t testing.TB, redirectURI, userID string) string {
	t.Helper()
	var out struct{ Code string }
	if st := f.do(t, http.MethodPost, "/_fake/authorize", map[string]string{"client_id": fakeClient, "redirect_uri": redirectURI, "user_id": userID}, &out); st != 200 {
		t.Fatalf("authorize: %d", st)
	}
	return out.Code
}

func (f *fake) InjectFaults(t testing.TB, path string, faults ...map[string]any) {
	t.Helper()
	if st := f.do(t, http.MethodPost, "/_fake/faults", map[string]any{"path": path, "faults": faults}, nil); st != 204 {
		t.Fatalf("inject faults: %d", st)
	}
}

// ---------------------------------------------------------------------------
// Vault, as a process.

type vault struct {
	Addr    string
	Token   string
	dir     string
	logPath string
	args    []string
	cmd     *exec.Cmd
	done    chan struct{}
}

// startDevVault starts `vault server -dev` with the plugin directory and a
// known root token on a free loopback port.
func startDevVault(t testing.TB) *vault {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	v := &vault{Addr: fmt.Sprintf("http://127.0.0.1:%d", port), Token: "root-" + randomHex(8), dir: dir, logPath: filepath.Join(dir, "vault.log")}
	hcl := fmt.Sprintf("plugin_directory = %q\napi_addr = %q\n", pluginDir, v.Addr)
	writeFile(t, filepath.Join(dir, "vault.hcl"), hcl)
	t.Cleanup(v.stop)
	v.args = []string{"server", "-dev", "-dev-listen-address=127.0.0.1:" + strconv.Itoa(port),
		"-dev-root-token-id=" + v.Token, "-config=" + filepath.Join(dir, "vault.hcl"), "-log-level=debug"}
	v.start(t)
	return v
}

// startFileVault starts a non-dev server with file storage, initialises and
// unseals it. Restart with v.restart.
func startFileVault(t testing.TB) *vault {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	v := &vault{Addr: fmt.Sprintf("http://127.0.0.1:%d", port), dir: dir, logPath: filepath.Join(dir, "vault.log")}
	hcl := fmt.Sprintf(`
storage "file" { path = %q }
listener "tcp" {
  address     = "127.0.0.1:%d"
  tls_disable = true
}
plugin_directory = %q
api_addr         = %q
disable_mlock    = true
log_level        = "debug"
`, filepath.Join(dir, "data"), port, pluginDir, v.Addr)
	writeFile(t, filepath.Join(dir, "vault.hcl"), hcl)
	t.Cleanup(v.stop)
	v.args = []string{"server", "-config=" + filepath.Join(dir, "vault.hcl")}
	v.start(t)

	var initResp struct {
		Keys      []string `json:"keys_base64"`
		RootToken string   `json:"root_token"`
	}
	v.mustAPI(t, http.MethodPut, "sys/init", map[string]any{"secret_shares": 1, "secret_threshold": 1}, &initResp)
	if len(initResp.Keys) == 0 || initResp.RootToken == "" {
		t.Fatal("sys/init returned no unseal key or root token")
	}
	v.Token = initResp.RootToken
	writeFile(t, filepath.Join(dir, "unseal.key"), initResp.Keys[0])
	v.unseal(t)
	return v
}

func (v *vault) unseal(t testing.TB) {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(v.dir, "unseal.key"))
	if err != nil {
		t.Fatal(err)
	}
	v.mustAPI(t, http.MethodPut, "sys/unseal", map[string]any{"key": string(key)}, nil)
	waitFor(t, 30*time.Second, "Vault to become active", func() bool {
		var h map[string]any
		st, _ := v.api(t, http.MethodGet, "sys/health", nil, &h)
		return st == 200
	})
}

func (v *vault) start(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(v.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	v.cmd = exec.Command(vaultBin, v.args...)
	v.cmd.Stdout, v.cmd.Stderr = logf, logf
	v.cmd.Env = append(os.Environ(), "VAULT_ADDR="+v.Addr)
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); logf.Close(); close(done) }(v.cmd, v.done)
	waitFor(t, 60*time.Second, "Vault to listen", func() bool {
		resp, err := http.Get(v.Addr + "/v1/sys/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
}

// stop terminates Vault gracefully (SIGTERM), then kills it if it lingers.
func (v *vault) stop() {
	if v.cmd == nil || v.cmd.Process == nil {
		return
	}
	select {
	case <-v.done:
		return
	default:
	}
	_ = v.cmd.Process.Signal(os.Interrupt)
	select {
	case <-v.done:
	case <-time.After(20 * time.Second):
		_ = v.cmd.Process.Kill()
		<-v.done
	}
}

// restart stops and starts the same server (file storage: unseal again). The
// process belongs to the test that created v, not to the caller's subtest.
func (v *vault) restart(t testing.TB) {
	t.Helper()
	v.stop()
	v.start(t)
	v.unseal(t)
}

// Log returns everything Vault (and the plugin, whose stderr Vault relays) logged.
func (v *vault) Log(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(v.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// cli runs the vault CLI against this server.
func (v *vault) cli(t testing.TB, token string, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, vaultBin, args...)
	cmd.Env = append(os.Environ(), "VAULT_ADDR="+v.Addr, "VAULT_TOKEN="+token, "VAULT_FORMAT=", "NO_COLOR=1")
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code = 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	return out.String(), errb.String(), code
}

// vault runs the CLI with the root token and fails the test on a non-zero exit.
func (v *vault) vault(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, code := v.cli(t, v.Token, "", args...)
	if code != 0 {
		t.Fatalf("vault %s: exit %d\n%s%s", strings.Join(redactArgs(args), " "), code, out, errOut)
	}
	return out
}

// vaultJSON runs the CLI with -format=json and decodes the output.
func (v *vault) vaultJSON(t testing.TB, out any, args ...string) {
	t.Helper()
	n := 1 // -format goes after the command words: "read", or "lease lookup"
	if subcommandArgs(args) != "" {
		n = 2
	}
	full := append(append(append([]string{}, args[:n]...), "-format=json"), args[n:]...)
	raw := v.vault(t, full...)
	if err := json.Unmarshal([]byte(raw), out); err != nil {
		t.Fatalf("vault %s: output is not JSON: %v", strings.Join(redactArgs(args), " "), err)
	}
}

// subcommandArgs returns the second word for two-word commands such as
// "lease lookup", so -format goes after them.
func subcommandArgs(args []string) string {
	switch args[0] {
	case "lease", "plugin", "secrets", "audit", "token", "policy", "auth":
		if len(args) > 1 {
			return args[1]
		}
	}
	return ""
}

// redactArgs keeps secrets given inline out of failure messages.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if k, _, ok := strings.Cut(a, "="); ok && (strings.Contains(k, "secret") || k == "code") {
			a = k + "=[redacted]"
		}
		out[i] = a
	}
	return out
}

// api calls the HTTP API with the root token; returns status and decodes into out.
func (v *vault) api(t testing.TB, method, path string, body any, out any) (int, string) {
	t.Helper()
	return v.apiAs(t, v.Token, method, path, body, out)
}

func (v *vault) apiAs(t testing.TB, token, method, path string, body any, out any) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, v.Addr+"/v1/"+path, rd)
	if token != "" {
		req.Header.Set("X-Vault-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		_ = json.Unmarshal(raw, out)
	}
	return resp.StatusCode, string(raw)
}

func (v *vault) mustAPI(t testing.TB, method, path string, body any, out any) {
	t.Helper()
	st, raw := v.api(t, method, path, body, out)
	if st >= 300 {
		t.Fatalf("%s %s: HTTP %d: %s", method, path, st, raw)
	}
}

// installPlugin registers the plugin by sha256 and version, enables it at
// instacart/ and writes config for the fake.
func (v *vault) installPlugin(t testing.TB, f *fake) {
	t.Helper()
	v.vault(t, "plugin", "register", "-sha256="+pluginSHA[oldVersion], "-version="+oldVersion, "secret", pluginName)
	v.vault(t, "secrets", "enable", "-path=instacart", "-plugin-version="+oldVersion, pluginName)
	if f != nil {
		v.vault(t, "write", "instacart/config", "client_id="+fakeClient, "client_secret=@"+f.SecretFile(), "base_url="+f.URL)
	}
}

// creds is the JSON shape of `vault read -format=json instacart/creds/<role>`.
type creds struct {
	LeaseID       string `json:"lease_id"`
	LeaseDuration int    `json:"lease_duration"`
	Renewable     bool   `json:"renewable"`
	Data          struct {
		AccessToken string   `json:"access_token"`
		TokenType   string   `json:"token_type"`
		Scopes      []string `json:"scopes"`
		ExpiresAt   string   `json:"expires_at"`
		CreatedAt   string   `json:"created_at"`
		UserID      string   `json:"user_id"`
	} `json:"data"`
	Warnings []string `json:"warnings"`
}

func (c creds) expiresAt(t testing.TB) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339, c.Data.ExpiresAt)
	if err != nil {
		t.Fatalf("expires_at %q: %v", c.Data.ExpiresAt, err)
	}
	return at
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tokenSet collects every access token handed out in a test, for the
// secrets-hygiene scan.
type tokenSet struct {
	mu     sync.Mutex
	tokens []string
}

func (s *tokenSet) add(tok string) {
	s.mu.Lock()
	s.tokens = append(s.tokens, tok)
	s.mu.Unlock()
}

func (s *tokenSet) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tokens...)
}

func itoa(i int) string { return strconv.Itoa(i) }

func readFileString(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// startProcess runs a helper process (e.g. vault agent) for the test's life,
// logging to logPath.
func startProcess(t testing.TB, logPath string, name string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
	return cmd
}

type tokenInfo struct {
	ClientID  string    `json:"client_id"`
	ExpiresAt time.Time `json:"expires_at"`
	Revoked   bool      `json:"revoked"`
	Live      bool      `json:"live"`
}

// tokenInfo asks the fake what it knows about a token.
func (f *fake) tokenInfo(t testing.TB, tok string) tokenInfo {
	t.Helper()
	var info tokenInfo
	if st := f.do(t, http.MethodGet, "/_fake/tokens/"+tok, nil, &info); st != 200 {
		t.Fatalf("fake does not know the token (%d)", st)
	}
	return info
}

func jsonInto(s string, out any) error { return json.Unmarshal([]byte(s), out) }
