//go:build e2e

package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// TestREADMECommands runs every ```shell block of the README and of the docs
// pages it continues on (docPages), in order, against
// a dev Vault and the fake, with the placeholders replaced by working values,
// so the documentation cannot drift from the engine. That includes the install
// and upgrade steps, make build included (see readmeShell). Blocks that run
// other make targets (the two commands: what CI runs in the first place) are
// skipped, and so are those of "A leaked shared token", which need a Vault
// Proxy and Agent (TestFlushReachesProxyAndAgent runs them), and those "on
// `make dev`" (TestMakeDevRecipes runs them).
func TestREADMECommands(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run the README's examples")
	}
	f := startFake(t, 24*time.Hour)
	dir := t.TempDir()

	// A second application for the rotation example.
	newSecret := "e2e-rotated-" + stack.RandomHex(12)
	writeFile(t, filepath.Join(dir, "new_client_secret"), newSecret)
	if err := f.AddClient("e2e-client-2", newSecret); err != nil {
		t.Fatal(err)
	}
	sh := newREADMEShell(t,
		"<your_client_id>", fakeClient,
		"/path/to/client_secret", f.SecretFile(),
		"https://connect.dev.instacart.tools", f.URL,
		"<new_client_id>", "e2e-client-2",
		"/path/to/new_client_secret", filepath.Join(dir, "new_client_secret"),
		"/var/log/vault_audit.log", filepath.Join(dir, "audit.log"),
		"/path/to/leaked_token", filepath.Join(dir, "leaked_token"),
		"/etc/prometheus/vault-token", filepath.Join(dir, "vault-token"),
		"/etc/app", filepath.Join(dir, "app"),
		"$HOME/.vault-header", filepath.Join(dir, "vault-header"),
	)

	blocks := readmeBlocks(t)
	if len(blocks) < 8 {
		t.Fatalf("found only %d shell blocks in the README", len(blocks))
	}
	ran := 0
	for i, b := range blocks {
		if !onlyMakeBuild(b.body) {
			continue // the two commands are what CI runs in the first place
		}
		if b.heading == leakedTokenHeading {
			continue // TestFlushReachesProxyAndAgent runs them, with a Proxy and an Agent
		}
		if strings.Contains(b.heading, makeDevMark) {
			continue // TestMakeDevRecipes runs them, against make dev
		}
		block := b.body
		// Each authorization code is single-use: a fresh one per occurrence.
		for strings.Contains(block, "<code from Instacart>") {
			block = strings.Replace(block, "<code from Instacart>", f.Authorize(t, "https://shop.example.com/instacart/callback", "u1"), 1)
		}
		// Finding the lease of a token: a token read now, so the audit log
		// (enabled by an earlier block) has its answer.
		leaked := strings.Contains(block, "/path/to/leaked_token")
		if leaked {
			tok := strings.TrimSpace(sh.v.vault(t, "read", "-field=access_token", "instacart/creds/fulfillment"))
			sh.v.Secrets = append(sh.v.Secrets, tok)
			writeFile(t, filepath.Join(dir, "leaked_token"), tok)
		}
		sh.checkout(b.heading)
		stdout, stderr, err := sh.run(t, block)
		if err != nil {
			t.Errorf("README shell block %d (under %q) failed (%v):\n%s\nstderr:\n%s", i+1, b.heading, err, b.body, stderr)
			continue
		}
		if leaked && !strings.Contains(stdout, `"lease_id":"instacart/creds/fulfillment/`) {
			t.Errorf("README block %d (under %q) printed no lease of the token it looked for:\n%s", i+1, b.heading, stdout)
		}
		ran++
	}
	t.Logf("ran %d of %d README shell blocks", ran, len(blocks))
	assertNoSecrets(t, "Vault server log", sh.v.Log(t), f.Secret(), nil)
}

// readmeShell runs README shell blocks as an operator would: with bash, from
// the repository root, against one dev Vault, each command as written, with
// only placeholders replaced. Two paths stand for the operator's machines:
// .bin/plugins is a build directory of the test's own (make's BIN, passed in
// MAKEFLAGS so `make build VERSION=...` runs as written and writes there), and
// /etc/vault/plugins is this Vault's plugin_directory, empty at the start. So
// what Vault registers and runs is exactly what the README's make command
// built and its install command copied.
type readmeShell struct {
	v     *vault
	build string // make's BIN
	repl  *strings.Replacer
	token string   // VAULT_TOKEN, if not v's root token
	env   []string // set by checkout
}

// checkout stands for the checkout an operator builds from for the blocks
// under heading: the release installed first, or the newer one of
// "### Upgrade". make's VERSION in the environment is what `make build` and
// `make -s version` give on that checkout. A section's later blocks use the
// shell variable its first block set ($VERSION, $NEW), as in one shell.
func (sh *readmeShell) checkout(heading string) {
	sh.env = []string{"VERSION=" + oldVersion}
	if heading == "### Upgrade" {
		sh.env = []string{"VERSION=" + newVersion, "NEW=" + newVersion}
	}
}

// newREADMEShell starts a dev Vault with an empty plugin directory; oldnew are
// further placeholder replacements.
func newREADMEShell(t testing.TB, oldnew ...string) *readmeShell {
	t.Helper()
	plugins, err := os.MkdirTemp(suiteTmp, "node-plugins-") // under suiteTmp: the stray-process check sees its plugins
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(plugins) })
	build := t.TempDir()
	sh := &readmeShell{v: startDevVaultWithPlugins(t, plugins), build: build}
	sh.repl = strings.NewReplacer(append([]string{
		"/etc/vault/plugins", plugins,
		".bin/plugins", filepath.Join(build, "plugins"),
	}, oldnew...)...)
	return sh
}

// run runs one block; it returns what the block printed.
func (sh *readmeShell) run(t testing.TB, block string) (stdout, stderr string, err error) {
	t.Helper()
	token := sh.token
	if token == "" {
		token = sh.v.Token
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", sh.repl.Replace(block))
	cmd.Dir = repoRoot
	cmd.Env = makeEnv("MAKEFLAGS=BIN="+sh.build, "VAULT_ADDR="+sh.v.Addr, "VAULT_TOKEN="+token,
		"VAULT_FORMAT=", "PATH="+filepath.Dir(vaultBin)+":"+filepath.Dir(fakeBin)+":"+os.Getenv("PATH"))
	cmd.Env = append(cmd.Env, sh.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// mustRun runs one block and fails the test if it fails.
func (sh *readmeShell) mustRun(t testing.TB, block string) string {
	t.Helper()
	out, stderr, err := sh.run(t, block)
	if err != nil {
		t.Fatalf("README shell block failed (%v):\n%s\nstdout:\n%s\nstderr:\n%s", err, block, out, stderr)
	}
	return out
}

// readmeBlock is a ```shell block of the README and the heading it is under.
type readmeBlock struct{ heading, body string }

// docPages are the pages whose shell blocks the suite runs, in the order
// they are run: the README, then the docs pages its recipes continue on.
// Pages left out hold no shell block an operator runs against Vault
// (TestDocPagesWithShellBlocksAreRun keeps that true).
var docPages = []string{"README.md", "docs/operations.md", "docs/clients.md"}

// docPagesNotRun are pages whose shell blocks are not run here, and why.
var docPagesNotRun = map[string]string{
	"docs/development.md": "make targets only, which CI runs in the first place",
	"docs/releasing.md":   "cutting a release: tags and make release (TestMakeRelease runs make release)",
	"docs/dashboard.md":   "the Grafana dashboard, tested by its own test",
}

// makeDevMark is in the heading of every recipe written for make dev's
// Vault: TestMakeDevRecipes runs those, in make dev's environment.
const makeDevMark = "on `make dev`"

func readmeBlocks(t testing.TB) []readmeBlock {
	t.Helper()
	var blocks []readmeBlock
	for _, page := range docPages {
		md, err := os.ReadFile(filepath.Join(repoRoot, page))
		if err != nil {
			t.Fatal(err)
		}
		blocks = append(blocks, shellBlocks(string(md))...)
	}
	return blocks
}

// TestDocPagesWithShellBlocksAreRun fails when a docs page has shell blocks
// that neither TestREADMECommands nor TestMakeDevRecipes runs and that no
// reason leaves out: a block moved to a new page must not silently stop
// being run.
func TestDocPagesWithShellBlocksAreRun(t *testing.T) {
	pages, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pages {
		rel, _ := filepath.Rel(repoRoot, p)
		md := readFileString(t, p)
		if len(shellBlocks(md)) == 0 || slices.Contains(docPages, rel) {
			continue
		}
		if why, ok := docPagesNotRun[rel]; ok {
			t.Logf("%s: shell blocks not run here: %s", rel, why)
			continue
		}
		t.Errorf("%s has shell blocks no test runs: add it to docPages (or, with a reason, docPagesNotRun)", rel)
	}
}

// readmeSection returns the shell blocks under one heading (the exact line,
// "### Upgrade") of the doc pages, up to the next heading of any level; it
// fails the test if there are none.
func readmeSection(t testing.TB, heading string) []string {
	t.Helper()
	var out []string
	for _, b := range readmeBlocks(t) {
		if b.heading == heading {
			out = append(out, b.body)
		}
	}
	if len(out) == 0 {
		t.Fatalf("README has no shell blocks under %q", heading)
	}
	return out
}

// shellBlocks returns the bodies of ```shell fenced blocks, each with the
// heading it is under.
func shellBlocks(md string) []readmeBlock {
	var blocks []readmeBlock
	var cur *strings.Builder
	heading := ""
	inFence := false // any fenced block: a # line in it is no heading
	for _, line := range strings.Split(md, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && !inFence && strings.HasPrefix(line, "#"):
			heading = line
		case cur == nil && !inFence && trimmed == "```shell":
			cur = &strings.Builder{}
		case cur == nil && strings.HasPrefix(trimmed, "```"):
			inFence = !inFence
		case cur != nil && trimmed == "```":
			blocks = append(blocks, readmeBlock{heading: heading, body: cur.String()})
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		}
	}
	return blocks
}

// onlyMakeBuild reports whether every make command of a block is make build
// (which readmeShell runs into its own directory) or make -s version.
func onlyMakeBuild(block string) bool {
	for _, line := range strings.Split(block, "\n") {
		for _, cmd := range strings.Split(line, "$(") {
			f := strings.Fields(cmd)
			if len(f) == 0 || f[0] != "make" {
				continue
			}
			if !(len(f) >= 2 && f[1] == "build") && !(len(f) >= 3 && f[1] == "-s" && strings.HasPrefix(f[2], "version")) {
				return false
			}
		}
	}
	return true
}

// TestREADMEFitsOnAFewScreens keeps the README to what a first day needs:
// anything more belongs on a docs/ page it links.
func TestREADMEFitsOnAFewScreens(t *testing.T) {
	const most = 400
	if n := strings.Count(readFileString(t, filepath.Join(repoRoot, "README.md")), "\n"); n > most {
		t.Errorf("README.md has %d lines; at most %d, with the rest on docs/ pages", n, most)
	}
}
