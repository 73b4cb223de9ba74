//go:build e2e

package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// TestREADMECommands runs every ```shell block of the README, in order, against
// a dev Vault and the fake, with the placeholders replaced by working values,
// so the documentation cannot drift from the engine. Blocks that need what a
// test cannot have here (make, vault agent) are covered elsewhere and skipped
// by rule below.
func TestREADMECommands(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run the README's examples")
	}
	readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	dir := t.TempDir()

	// A second application for the rotation example.
	newSecret := "e2e-rotated-" + stack.RandomHex(12)
	writeFile(t, filepath.Join(dir, "new_client_secret"), newSecret)
	if err := f.AddClient("e2e-client-2", newSecret); err != nil {
		t.Fatal(err)
	}
	replacements := []string{
		"/etc/vault/plugins", pluginDir,
		"<your_client_id>", fakeClient,
		"/path/to/client_secret", f.SecretFile(),
		"https://connect.dev.instacart.tools", f.URL,
		"<new_client_id>", "e2e-client-2",
		"/path/to/new_client_secret", filepath.Join(dir, "new_client_secret"),
		"/var/log/vault_audit.log", filepath.Join(dir, "audit.log"),
		"<token>", "example-token",
		"/etc/prometheus/vault-token", filepath.Join(dir, "vault-token"),
	}

	blocks := shellBlocks(string(readme))
	if len(blocks) < 8 {
		t.Fatalf("found only %d shell blocks in the README", len(blocks))
	}
	ran := 0
	for i, block := range blocks {
		if strings.Contains(block, "make ") {
			continue // the two commands are what CI runs in the first place
		}
		script := strings.NewReplacer(replacements...).Replace(block)
		// Each authorization code is single-use: a fresh one per occurrence.
		for strings.Contains(script, "<code from Instacart>") {
			script = strings.Replace(script, "<code from Instacart>", f.Authorize(t, "https://shop.example.com/instacart/callback", "u1"), 1)
		}
		if strings.Contains(script, "SHA256_NEW") { // the upgrade example's second binary

			script = "SHA256_NEW=" + pluginSHA[newVersion] + "\n" + script
		}
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "VAULT_ADDR="+v.Addr, "VAULT_TOKEN="+v.Token, "PATH="+filepath.Dir(vaultBin)+":"+os.Getenv("PATH"))
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = nil, &stderr
		if err := cmd.Run(); err != nil {
			t.Errorf("README shell block %d failed (%v):\n%s\nstderr:\n%s", i+1, err, block, stderr.String())
			continue
		}
		ran++
	}
	t.Logf("ran %d of %d README shell blocks", ran, len(blocks))
	assertNoSecrets(t, "Vault server log", v.Log(t), f.Secret(), nil)
}

// shellBlocks returns the bodies of ```shell fenced blocks.
func shellBlocks(md string) []string {
	var blocks []string
	var cur *strings.Builder
	for _, line := range strings.Split(md, "\n") {
		switch {
		case cur == nil && strings.TrimSpace(line) == "```shell":
			cur = &strings.Builder{}
		case cur != nil && strings.TrimSpace(line) == "```":
			blocks = append(blocks, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		}
	}
	return blocks
}
