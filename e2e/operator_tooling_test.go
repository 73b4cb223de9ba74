//go:build e2e

package e2e

import (
	"encoding/json"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// TestOpenAPI checks that Vault's OpenAPI document describes every operation
// of the mount with a unique, readable operationId and described fields.
func TestOpenAPI(t *testing.T) {
	v := startDevVault(t)
	v.installPlugin(t, nil)

	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	v.mustAPI(t, http.MethodGet, "sys/internal/specs/openapi", nil, &doc)
	seen := map[string]string{}
	for path, item := range doc.Paths {
		if !strings.HasPrefix(path, "/instacart/") {
			continue
		}
		if d, _ := item["description"].(string); d == "" {
			t.Errorf("%s has no description", path)
		}
		for method, op := range item {
			opMap, ok := op.(map[string]any)
			if !ok || method == "parameters" {
				continue
			}
			id, _ := opMap["operationId"].(string)
			if !strings.HasPrefix(id, "instacart-") {
				t.Errorf("%s %s: operationId %q", method, path, id)
			}
			if prev, dup := seen[id]; dup {
				t.Errorf("operationId %q used by %s and %s %s", id, prev, method, path)
			}
			seen[id] = method + " " + path
		}
	}
	for _, want := range []string{
		"instacart-read-configuration", "instacart-configure", "instacart-delete-configuration",
		"instacart-list-roles", "instacart-read-role", "instacart-write-role", "instacart-delete-role",
		"instacart-read-credentials", "instacart-generate-credentials", "instacart-flush-cached-tokens",
	} {
		if _, ok := seen[want]; !ok {
			t.Errorf("no operation %q; have %v", want, slices.Sorted(maps.Keys(seen)))
		}
	}
	// Request bodies: every field is described.
	var schemas struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]struct {
					Description string `json:"description"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	v.mustAPI(t, http.MethodGet, "sys/internal/specs/openapi", nil, &schemas)
	n := 0
	for name, s := range schemas.Components.Schemas {
		if !strings.HasPrefix(name, "Instacart") {
			continue
		}
		for field, p := range s.Properties {
			n++
			if p.Description == "" {
				t.Errorf("schema %s field %s has no description", name, field)
			}
		}
	}
	if n == 0 {
		t.Error("no Instacart request schemas in the OpenAPI document")
	}
	t.Logf("%d operations, %d described request fields", len(seen), n)
}

// TestInputFormsAndTidyReads: durations in Vault's usual forms, lists as comma
// strings or arrays, and reads that show only the documented fields.
func TestInputFormsAndTidyReads(t *testing.T) {
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)

	v.vault(t, "write", "instacart/roles/a", "grant_type=client_credentials", "scopes=connect:fulfillment,connect:ian", "ttl=90", "max_ttl=2h", "min_remaining_ttl=30m")
	v.mustAPI(t, http.MethodPost, "instacart/roles/b", map[string]any{
		"grant_type": "client_credentials", "scopes": []string{"connect:fulfillment", "connect:ian"}, "ttl": 90, "max_ttl": "7200s", "min_remaining_ttl": "1800",
	}, nil)
	var a, b struct {
		Data map[string]any `json:"data"`
	}
	v.vaultJSON(t, &a, "read", "instacart/roles/a")
	v.vaultJSON(t, &b, "read", "instacart/roles/b")
	if !reflect.DeepEqual(a.Data, b.Data) {
		t.Errorf("CLI and API forms differ:\n%v\n%v", a.Data, b.Data)
	}
	if a.Data["ttl"] != float64(90) || a.Data["max_ttl"] != float64(7200) || a.Data["min_remaining_ttl"] != float64(1800) {
		t.Errorf("durations read back as %v %v %v", a.Data["ttl"], a.Data["max_ttl"], a.Data["min_remaining_ttl"])
	}
	// Only the fields that apply to the role's grant are shown.
	wantRole := []string{"grant_type", "max_ttl", "min_remaining_ttl", "scopes", "token_reuse", "ttl"}
	if got := slices.Sorted(maps.Keys(a.Data)); !reflect.DeepEqual(got, wantRole) {
		t.Errorf("role read shows %v, want %v", got, wantRole)
	}
	var cfg struct {
		Data map[string]any `json:"data"`
	}
	v.vaultJSON(t, &cfg, "read", "instacart/config")
	wantCfg := []string{"base_url", "client_id", "client_secret_set", "max_concurrent_mints", "max_retries", "request_timeout"}
	if got := slices.Sorted(maps.Keys(cfg.Data)); !reflect.DeepEqual(got, wantCfg) {
		t.Errorf("config read shows %v, want %v", got, wantCfg)
	}
}

// TestPolicies applies examples/policies as shipped and shows the
// application policy reaches its role's creds and the leases of that role
// only (named in the URL; a lease_id in the body is denied), and the
// operator policy does what the README tells operators to do: config,
// roles, flush, tidy, and list and revoke this mount's leases.
func TestPolicies(t *testing.T) {
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, nil)
	v.vault(t, "policy", "write", "instacart-operator", filepath.Join(repoRoot, "examples/policies/operator.hcl"))
	v.vault(t, "policy", "write", "instacart-app", filepath.Join(repoRoot, "examples/policies/app.hcl"))
	operator := strings.TrimSpace(v.vault(t, "token", "create", "-policy=instacart-operator", "-field=token"))
	// As the README creates it: without Vault's default policy, which would
	// let it look up and renew any lease by id.
	app := strings.TrimSpace(v.vault(t, "token", "create", "-no-default-policy", "-policy=instacart-app", "-field=token"))

	// The operator configures the engine and its roles...
	for _, args := range [][]string{
		{"write", "instacart/config", "client_id=" + fakeClient, "client_secret=@" + f.SecretFile(), "base_url=" + f.URL},
		{"write", "instacart/roles/fulfillment", "grant_type=client_credentials", "scopes=connect:fulfillment"},
		{"write", "instacart/roles/other", "grant_type=client_credentials", "scopes=connect:ian"},
		{"list", "instacart/roles"},
		{"delete", "instacart/cache/fulfillment"},
		{"write", "-f", "instacart/tidy"},
		{"read", "instacart/tidy"},
		{"read", "-format=raw", "instacart/metrics"},
	} {
		if out, errOut, code := v.cli(t, operator, "", args...); code != 0 {
			t.Errorf("operator: vault %s: exit %d %s%s", strings.Join(redactArgs(args), " "), code, out, errOut)
		}
	}
	// ...but cannot read tokens.
	if _, _, code := v.cli(t, operator, "", "read", "instacart/creds/fulfillment"); code == 0 {
		t.Error("operator policy can read creds")
	}

	// The application reads its role's token and nothing else.
	out, errOut, code := v.cli(t, app, "", "read", "-field=token_type", "instacart/creds/fulfillment")
	if code != 0 || strings.TrimSpace(out) != "Bearer" {
		t.Fatalf("app cannot read its creds: exit %d %s", code, errOut)
	}
	// Leases: the app's own, and one of another role (read as root).
	appLease := strings.TrimSpace(v.cliOK(t, app, "read", "-field=lease_id", "instacart/creds/fulfillment"))
	otherLease := strings.TrimSpace(v.vault(t, "read", "-field=lease_id", "instacart/creds/other"))
	if !strings.HasPrefix(appLease, "instacart/creds/fulfillment/") || !strings.HasPrefix(otherLease, "instacart/creds/other/") {
		t.Fatalf("lease ids %q and %q", appLease, otherLease)
	}
	for _, args := range [][]string{
		{"read", "instacart/config"},
		{"read", "instacart/creds/other"},
		{"read", "instacart/roles/fulfillment"},
		{"list", "instacart/roles"},
		{"write", "instacart/roles/fulfillment", "grant_type=client_credentials"},
		{"delete", "instacart/cache/fulfillment"},
		{"write", "-f", "instacart/tidy"},
		{"read", "instacart/tidy"},
		{"read", "instacart/metrics"},
		// Another role's lease, in the URL (as `vault lease revoke` sends
		// it), in the body, or in the body of a URL the policy allows
		// (Vault would prefer the body's).
		{"lease", "revoke", otherLease},
		{"write", "-f", "sys/leases/revoke/" + otherLease},
		{"write", "sys/leases/revoke", "lease_id=" + otherLease},
		{"write", "sys/leases/revoke/" + appLease, "lease_id=" + otherLease},
		{"write", "sys/leases/renew/" + appLease, "lease_id=" + otherLease},
		{"lease", "revoke", "-prefix", "instacart/creds/fulfillment"},
		{"list", "sys/leases/lookup/instacart/creds/fulfillment/"},
		// The body forms the default policy would allow.
		{"lease", "lookup", otherLease},
		{"lease", "renew", otherLease},
	} {
		_, errOut, code := v.cli(t, app, "", args...)
		if code == 0 || !strings.Contains(errOut, "403") {
			t.Errorf("app: vault %s: exit %d, want 403: %s", strings.Join(args, " "), code, errOut)
		}
	}
	if !slices.Contains(v.leases(t, "instacart/creds/other/"), strings.TrimPrefix(otherLease, "instacart/creds/other/")) {
		t.Fatal("the app's refused calls revoked the other role's lease")
	}
	// Its own lease, in the URL, as tokensource, examples/app-node and
	// `vault lease revoke` send it.
	v.cliOK(t, app, "write", "-f", "sys/leases/renew/"+appLease)
	v.cliOK(t, app, "lease", "revoke", "-sync", appLease)
	if ids := v.leases(t, "instacart/creds/fulfillment/"); slices.Contains(ids, strings.TrimPrefix(appLease, "instacart/creds/fulfillment/")) {
		t.Error("the app revoked its lease, but it is still there")
	}

	// The operator lists this mount's leases and revokes them, one or a
	// role's at once, but no lease outside the mount.
	if out := v.cliOK(t, operator, "list", "sys/leases/lookup/instacart/creds/other/"); !strings.Contains(out, strings.TrimPrefix(otherLease, "instacart/creds/other/")) {
		t.Errorf("operator: the lease list does not show the other role's lease")
	}
	v.cliOK(t, operator, "lease", "lookup", otherLease) // Vault's default policy
	v.cliOK(t, operator, "lease", "renew", otherLease)  // likewise
	v.cliOK(t, operator, "write", "-f", "sys/leases/renew/"+otherLease)
	v.cliOK(t, operator, "lease", "revoke", "-sync", "-prefix", otherLease)
	if ids := v.leases(t, "instacart/creds/other/"); len(ids) != 0 {
		t.Errorf("operator revoked the lease by its id as a prefix; %d left", len(ids))
	}
	one := strings.TrimSpace(v.vault(t, "read", "-field=lease_id", "instacart/creds/other"))
	v.cliOK(t, operator, "lease", "revoke", "-sync", one)
	if ids := v.leases(t, "instacart/creds/other/"); len(ids) != 0 {
		t.Errorf("operator revoked the lease; %d left", len(ids))
	}
	v.vault(t, "read", "-field=lease_id", "instacart/creds/other")
	v.vault(t, "read", "-field=lease_id", "instacart/creds/other")
	v.cliOK(t, operator, "lease", "revoke", "-sync", "-prefix", "instacart/creds/other")
	if ids := v.leases(t, "instacart/creds/other/"); len(ids) != 0 {
		t.Errorf("operator revoked the role's leases by prefix; %d left", len(ids))
	}
	for _, args := range [][]string{
		{"lease", "revoke", "-prefix", "auth/token/create"},
		{"list", "sys/leases/lookup/auth/"},
		{"write", "sys/leases/revoke", "lease_id=" + appLease}, // the body form: any lease
		{"read", "instacart/creds/fulfillment"},
	} {
		_, errOut, code := v.cli(t, operator, "", args...)
		if code == 0 || !strings.Contains(errOut, "403") {
			t.Errorf("operator: vault %s: exit %d, want 403: %s", strings.Join(args, " "), code, errOut)
		}
	}
}

// cliOK runs the CLI as token and fails the test on a non-zero exit.
func (v *vault) cliOK(t testing.TB, token string, args ...string) string {
	t.Helper()
	out, errOut, code := v.cli(t, token, "", args...)
	if code != 0 {
		t.Fatalf("vault %s: exit %d\n%s%s", strings.Join(redactArgs(args), " "), code, out, v.Redact(errOut))
	}
	return out
}

// TestVaultAgent runs `vault agent` with examples/agent: the template renders
// a working token and re-renders a new one before the old one expires.
func TestVaultAgent(t *testing.T) {
	t.Parallel()
	const lifetime = 60 * time.Second
	f := startFake(t, lifetime)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/roles/fulfillment", "grant_type=client_credentials", "scopes=connect:fulfillment")
	appToken := v.appToken(t)

	dir := t.TempDir()
	tokenFile, rendered := filepath.Join(dir, "app-token"), filepath.Join(dir, "instacart-token")
	writeFile(t, tokenFile, appToken)
	cfg := exampleConfig(t, "examples/agent/agent.hcl",
		"http://127.0.0.1:8200", v.Addr,
		"/etc/vault-agent/app-token", tokenFile,
		"/etc/vault-agent/instacart-token.ctmpl", filepath.Join(repoRoot, "examples/agent/instacart-token.ctmpl"),
		"/run/app/instacart-token", rendered,
	)
	writeFile(t, filepath.Join(dir, "agent.hcl"), cfg)
	startProcess(t, filepath.Join(dir, "agent.log"), vaultBin, "agent", "-config="+filepath.Join(dir, "agent.hcl"))

	read := func() string {
		b, _ := os.ReadFile(rendered)
		return strings.TrimSpace(string(b))
	}
	waitFor(t, 30*time.Second, "the agent to render the token", func() bool { return len(read()) == 43 })
	first := read()
	if b, _ := os.ReadFile(rendered); string(b) != first {
		t.Errorf("the rendered file is the token plus %d bytes of whitespace, want the token alone", len(b)-len(first))
	}
	info := f.tokenInfo(t, first)
	if st := f.Users(t, first); st != 200 {
		t.Fatalf("rendered token: Connect answered %d", st)
	}
	if fi, _ := os.Stat(rendered); fi.Mode().Perm() != 0o600 {
		t.Errorf("rendered file mode %v, want 0600", fi.Mode().Perm())
	}
	waitFor(t, lifetime+30*time.Second, "the agent to render a new token", func() bool { return read() != first && len(read()) == 43 })
	second := read()
	if time.Now().After(info.ExpiresAt) {
		t.Errorf("new token rendered after the old one expired (%v)", info.ExpiresAt)
	}
	if st := f.Users(t, second); st != 200 {
		t.Errorf("re-rendered token: Connect answered %d", st)
	}
	assertNoSecrets(t, "agent log", readFileString(t, filepath.Join(dir, "agent.log")), f.Secret(), []string{first, second})
}

// TestVaultProxy runs `vault proxy` with examples/proxy: apps read creds
// without a Vault token, and many reads share one cached lease.
func TestVaultProxy(t *testing.T) {
	t.Parallel()
	f := startFake(t, time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/roles/fulfillment", "grant_type=client_credentials", "scopes=connect:fulfillment")
	proxy, proxyLog := startExampleProxy(t, v, v.appToken(t))

	mintsBefore := f.Mints(t) // writing config verified the credentials
	url := proxy + "/v1/instacart/creds/fulfillment"
	readOnce := func() (int, string) {
		resp, err := http.Get(url) // no X-Vault-Token: the proxy adds its own
		if err != nil {
			return 0, ""
		}
		defer resp.Body.Close()
		var out struct {
			Data struct {
				AccessToken string `json:"access_token"`
			} `json:"data"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out.Data.AccessToken
	}
	waitFor(t, 30*time.Second, "the proxy to serve creds", func() bool { st, _ := readOnce(); return st == 200 })

	const reads = 100
	tokens := make(chan string, reads)
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range reads / 10 {
				st, tok := readOnce()
				if st != 200 {
					t.Errorf("read through the proxy: HTTP %d", st)
				}
				tokens <- tok
			}
		}()
	}
	wg.Wait()
	close(tokens)
	seen := map[string]bool{}
	for tok := range tokens {
		seen[tok] = true
	}
	if len(seen) != 1 {
		t.Fatalf("%d reads through the proxy returned %d distinct tokens, want 1", reads, len(seen))
	}
	for tok := range seen {
		if st := f.Users(t, tok); st != 200 {
			t.Errorf("token from the proxy: Connect answered %d", st)
		}
	}
	if n := len(v.leases(t, "instacart/creds/fulfillment/")); n != 1 {
		t.Errorf("%d reads through the proxy created %d leases, want 1", reads+1, n)
	}
	if m := f.Mints(t) - mintsBefore; m != 1 {
		t.Errorf("%d reads through the proxy: %d mints at Connect, want 1", reads+1, m)
	}
	tokList := make([]string, 0, len(seen))
	for tok := range seen {
		tokList = append(tokList, tok)
	}
	assertNoSecrets(t, "proxy log", readFileString(t, proxyLog), f.Secret(), tokList)
}

// appToken is a Vault token with examples/policies/app.hcl.
func (v *vault) appToken(t testing.TB) string {
	t.Helper()
	v.vault(t, "policy", "write", "instacart-app", filepath.Join(repoRoot, "examples/policies/app.hcl"))
	return strings.TrimSpace(v.vault(t, "token", "create", "-policy=instacart-app", "-field=token"))
}

// exampleConfig is a file under examples/ with its placeholders (old, new
// pairs) replaced; it fails if a placeholder is gone.
func exampleConfig(t testing.TB, path string, oldnew ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, path))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(oldnew); i += 2 {
		if !strings.Contains(string(b), oldnew[i]) {
			t.Fatalf("%s no longer has the placeholder %q this test substitutes", path, oldnew[i])
		}
	}
	return strings.NewReplacer(oldnew...).Replace(string(b))
}

// TestPluginUpgrade follows the README word for word: the shell blocks of
// "Install on a Vault server" (make build of one checkout, the copy into the
// plugin directory, register and enable), then, with config, a role and a
// cached token in place, those of "### Upgrade" (make build of a newer
// checkout, the copy, register, tune, the global reload and the version
// check). The mount then runs the newer file, and config, roles and the
// cached token survive.
func TestPluginUpgrade(t *testing.T) {
	install := readmeSection(t, "## Install on a Vault server")
	upgrade := readmeSection(t, "### Upgrade")
	for _, want := range []string{"make build\n", "VERSION=$(make -s version)", `-version="$VERSION"`, `-command="vault-plugin-secrets-instacart-$VERSION"`} {
		if !strings.Contains(strings.Join(install, ""), want) {
			t.Fatalf("the README's install steps no longer say %q", want)
		}
	}
	for _, want := range []string{"make build\n", "NEW=$(make -s version)", `-version="$NEW"`, `-command="vault-plugin-secrets-instacart-$NEW"`, "-scope=global"} {
		if !strings.Contains(strings.Join(upgrade, ""), want) {
			t.Fatalf("the README's upgrade steps no longer say %q", want)
		}
	}

	f := startFake(t, 24*time.Hour)
	sh := newREADMEShell(t)
	v := sh.v
	sh.checkout("## Install on a Vault server")
	for _, block := range install {
		sh.mustRun(t, block)
	}
	v.vault(t, "write", "instacart/config", "client_id="+fakeClient, "client_secret=@"+f.SecretFile(), "base_url="+f.URL)
	v.vault(t, "write", "instacart/roles/fulfillment", "grant_type=client_credentials", "scopes=connect:fulfillment", "ttl=2h")
	var before creds
	v.vaultJSON(t, &before, "read", "instacart/creds/fulfillment")
	mints := f.Mints(t)

	var out string
	sh.checkout("### Upgrade")
	for _, block := range upgrade {
		out = sh.mustRun(t, block)
	}
	// The last command of the README's upgrade prints the running version.
	if lines := strings.Fields(out); len(lines) == 0 || lines[len(lines)-1] != newVersion {
		t.Errorf("the README's upgrade ends printing %q, want %s", out, newVersion)
	}
	var mounts map[string]struct {
		PluginVersion        string `json:"plugin_version"`
		RunningPluginVersion string `json:"running_plugin_version"`
		RunningSHA256        string `json:"running_sha256"`
	}
	v.vaultJSON(t, &mounts, "secrets", "list", "-detailed")
	m := mounts["instacart/"]
	wantSHA, err := stack.FileSHA256(filepath.Join(sh.build, "plugins", pluginFile(newVersion)))
	if err != nil {
		t.Fatal(err)
	}
	if m.PluginVersion != newVersion || m.RunningPluginVersion != newVersion || m.RunningSHA256 != wantSHA {
		t.Errorf("after the upgrade the mount is %+v; want %s running the file make build wrote (sha256 %s)", m, newVersion, wantSHA)
	}
	var role struct {
		Data map[string]any `json:"data"`
	}
	v.vaultJSON(t, &role, "read", "instacart/roles/fulfillment")
	if role.Data["ttl"] != float64(7200) {
		t.Errorf("role after upgrade: %v", role.Data)
	}
	var cfg struct {
		Data map[string]any `json:"data"`
	}
	v.vaultJSON(t, &cfg, "read", "instacart/config")
	if cfg.Data["client_id"] != fakeClient || cfg.Data["base_url"] != f.URL {
		t.Errorf("config after upgrade: %v", cfg.Data)
	}
	var after creds
	v.vaultJSON(t, &after, "read", "instacart/creds/fulfillment")
	if after.Data.AccessToken != before.Data.AccessToken || f.Mints(t) != mints {
		t.Error("the cached token did not survive the upgrade")
	}
}
