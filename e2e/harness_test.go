//go:build e2e

// Package e2e drives the plugin inside a real Vault server (.bin/vault, built
// from source by scripts/vault.sh) through the vault CLI and the HTTP API,
// against the Connect fake running as its own process.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

const (
	pluginName = "vault-plugin-secrets-instacart"
	oldVersion = "v0.2.0-dev.1"
	newVersion = "v0.2.0-dev.2"
	fakeClient = "e2e-client"
)

var (
	repoRoot string
	vaultBin string
	fakeBin  string
	// suiteTmp holds everything the suite builds and every plugin directory
	// its Vaults use; pluginDir is the one most tests share.
	suiteTmp  string
	pluginDir string
	// pluginSHA is the checksum of each built plugin version.
	pluginSHA = map[string]string{}
)

// pluginFile is the file name make build gives a version, and the -command
// it is registered with (as the README does).
func pluginFile(version string) string { return pluginName + "-" + version }

// TestMain builds the plugin (two versions, for upgrade tests) and the fake
// with make build, as the README's install steps do, into a directory of its
// own. A missing Vault binary is a failure, never a skip: make test builds it
// first.
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
	suiteTmp = tmp
	pluginDir = filepath.Join(tmp, "plugins") // make's $(BIN)/plugins
	fakeBin = filepath.Join(tmp, "connect-fake")
	for _, target := range [][]string{{"build", "VERSION=" + oldVersion}, {"plugin", "VERSION=" + newVersion}} {
		cmd := exec.Command("make", append(target, "BIN="+tmp)...)
		cmd.Dir = repoRoot
		cmd.Env = makeEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: make %s: %v\n%s", strings.Join(target, " "), err, out)
			return 1
		}
	}
	for _, v := range []string{oldVersion, newVersion} {
		sum, err := stack.FileSHA256(filepath.Join(pluginDir, pluginFile(v)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		pluginSHA[v] = sum
	}
	code := m.Run()
	// Nothing the suite started may outlive it: a plugin process left behind
	// means some Vault was not ended with its whole process group.
	stray, err := suitePluginProcs()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	for _, p := range stray {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: plugin process %d (parent %d) is still running after the suite\n", p.Pid, p.PPid)
		_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		code = 1
	}
	return code
}

// makeEnv is the environment for running make from a test, with extra
// entries added: without what an enclosing make (make test) passes down in
// MAKEFLAGS, so its VERSION= or -j cannot change what the test builds.
func makeEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VERSION":
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

func freePort(t testing.TB) int {
	t.Helper()
	port, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := stack.WaitFor(timeout, what, cond); err != nil {
		t.Fatal(err)
	}
}

// ---------------------------------------------------------------------------
// The Connect fake, as a process.

// fake wraps the shared process with methods that fail the test.
type fake struct{ *stack.Fake }

// startFake runs cmd/connect-fake on a free loopback port with a fresh secret.
func startFake(t testing.TB, lifetime time.Duration) *fake {
	t.Helper()
	sf, err := stack.StartFake(stack.FakeOptions{Bin: fakeBin, Dir: t.TempDir(), ClientID: fakeClient, Lifetime: lifetime})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sf.Stop)
	return &fake{sf}
}

// check fails the test on a failed admin call.
func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (f *fake) Stats(t testing.TB) stack.FakeStats {
	t.Helper()
	st, err := f.Fake.Stats()
	check(t, err)
	return st
}

func (f *fake) Mints(t testing.TB) int { t.Helper(); return f.Stats(t).Mints }

// Users calls POST /v2/fulfillment/users with the token: 200 = it works.
func (f *fake) Users(t testing.TB, token string) int {
	t.Helper()
	st, err := f.Fake.Users(token)
	check(t, err)
	return st
}

func (f *fake) Authorize(t testing.TB, redirectURI, userID string) string {
	t.Helper()
	code, err := f.Fake.Authorize(redirectURI, userID)
	check(t, err)
	return code
}

func (f *fake) InjectFaults(t testing.TB, path string, faults ...map[string]any) {
	t.Helper()
	check(t, f.Fake.InjectFaults(path, faults...))
}

func (f *fake) SetLifetime(t testing.TB, d time.Duration) {
	t.Helper()
	check(t, f.Fake.SetLifetime(d))
}

// SetClockSkew offsets the created_at the fake reports (whole seconds).
func (f *fake) SetClockSkew(t testing.TB, d time.Duration) {
	t.Helper()
	check(t, f.Fake.SetClockSkew(d))
}

// Output is everything the fake printed.
func (f *fake) Output(t testing.TB) string {
	t.Helper()
	out, err := f.Log()
	check(t, err)
	return out
}

// tokenInfo asks the fake what it knows about a token.
func (f *fake) tokenInfo(t testing.TB, tok string) stack.TokenInfo {
	t.Helper()
	info, err := f.TokenInfo(tok)
	check(t, err)
	return info
}

// ---------------------------------------------------------------------------
// Vault, as a process.

// vault is a shared Vault server plus what the suite needs beyond it: file
// storage with init, unseal and restart, and the CLI.
type vault struct {
	*stack.Vault
	dir string // vault.hcl, vault.log and, with storage, unseal.key
}

// startDevVault starts `vault server -dev` with the plugin directory and a
// random root token on a free loopback port.
func startDevVault(t testing.TB) *vault {
	t.Helper()
	return startDevVaultWithPlugins(t, pluginDir)
}

// startDevVaultWithPlugins is startDevVault with a plugin directory of the
// test's own (see newREADMEShell).
func startDevVaultWithPlugins(t testing.TB, plugins string) *vault {
	t.Helper()
	dir := t.TempDir()
	sv, err := stack.StartDevVault(stack.DevVaultOptions{Bin: vaultBin, PluginDir: plugins, Dir: dir, LogLevel: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sv.Stop)
	return &vault{Vault: sv, dir: dir}
}

// newVault describes a non-dev server on a free port whose config is
// dir/vault.hcl; the caller writes the config, then calls start.
func newVault(t testing.TB, port int) *vault {
	t.Helper()
	dir := t.TempDir()
	sv := stack.NewVault(vaultBin, fmt.Sprintf("http://127.0.0.1:%d", port), filepath.Join(dir, "vault.log"),
		"server", "-config="+filepath.Join(dir, "vault.hcl"))
	v := &vault{Vault: sv, dir: dir}
	t.Cleanup(sv.Stop)
	return v
}

// startFileVault starts a non-dev server with file storage, initialises and
// unseals it. Restart with v.restart.
func startFileVault(t testing.TB) *vault {
	t.Helper()
	port := freePort(t)
	v := newVault(t, port)
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
`, filepath.Join(v.dir, "data"), port, pluginDir, v.Addr)
	writeFile(t, filepath.Join(v.dir, "vault.hcl"), hcl)
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
	writeFile(t, filepath.Join(v.dir, "unseal.key"), initResp.Keys[0])
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
		st, _ := v.api(t, http.MethodGet, "sys/health", nil, nil)
		return st == 200
	})
}

func (v *vault) start(t testing.TB) {
	t.Helper()
	if err := v.Vault.Start(); err != nil {
		t.Fatal(err)
	}
}

// restart stops and starts the same server (file storage: unseal again). The
// process belongs to the test that created v, not to the caller's subtest.
func (v *vault) restart(t testing.TB) {
	t.Helper()
	v.Stop()
	v.start(t)
	v.unseal(t)
}

// Log returns everything Vault (and the plugin, whose stderr Vault relays) logged.
func (v *vault) Log(t testing.TB) string {
	t.Helper()
	out, err := v.Vault.Log()
	if err != nil {
		t.Fatal(err)
	}
	return out
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

// api calls the HTTP API with the root token; returns status and decodes a
// 2xx answer into out.
func (v *vault) api(t testing.TB, method, path string, body any, out any) (int, string) {
	t.Helper()
	st, raw, err := v.Call(method, path, body, out)
	if err != nil {
		t.Fatal(err)
	}
	return st, raw
}

// leases lists the lease ids under prefix (which ends in "/").
func (v *vault) leases(t testing.TB, prefix string) []string {
	t.Helper()
	ids, err := v.Leases(prefix)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func (v *vault) mustAPI(t testing.TB, method, path string, body any, out any) {
	t.Helper()
	if err := v.Must(method, path, body, out); err != nil {
		t.Fatal(err)
	}
}

// installPlugin registers the plugin by sha256 and version, enables it at
// instacart/ and writes config for the fake.
func (v *vault) installPlugin(t testing.TB, f *fake) {
	t.Helper()
	v.vault(t, "plugin", "register", "-sha256="+pluginSHA[oldVersion], "-version="+oldVersion, "-command="+pluginFile(oldVersion), "secret", pluginName)
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
func startProcess(t testing.TB, logPath string, name string, args ...string) *stack.Proc {
	t.Helper()
	p, err := stack.StartProc(filepath.Base(name), logPath, nil, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p
}
