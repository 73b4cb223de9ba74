//go:build e2e

package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// TestReleaseArtifacts runs `make release` and installs the artifact for this
// platform in Vault as the README says: each platform's directory holds the
// file under the name it is registered with, SHA256SUMS checks (with
// sha256sum -c, as the README says) and matches, and Vault runs the version the
// release was stamped with.
func TestReleaseArtifacts(t *testing.T) {
	t.Parallel()
	const version = "v0.3.0"
	dist := t.TempDir()
	cmd := exec.Command("make", "release", "VERSION="+version, "DIST="+dist)
	cmd.Dir = repoRoot
	cmd.Env = makeEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, out)
	}
	check := exec.Command("sha256sum", "-c", "SHA256SUMS")
	check.Dir = dist
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("cd dist && sha256sum -c SHA256SUMS: %v\n%s", err, out)
	}

	sums, err := os.Open(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer sums.Close()
	listed := map[string]string{}
	sc := bufio.NewScanner(sums)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q", sc.Text())
		}
		listed[name] = sum
	}
	file := pluginFile(version) // the name make build gives it, and the README registers
	platforms := []string{"linux_amd64", "linux_arm64", "darwin_amd64", "darwin_arm64"}
	if len(listed) != len(platforms) {
		t.Errorf("SHA256SUMS lists %d files, want one per platform (%v): %v", len(listed), platforms, listed)
	}
	for _, osArch := range platforms {
		name := osArch + "/" + file
		got, err := stack.FileSHA256(filepath.Join(dist, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if listed[name] != got {
			t.Errorf("%s: SHA256SUMS says %q, file hashes to %q", name, listed[name], got)
		}
	}

	// The artifact for this machine registers under its own name and runs in Vault.
	name := runtime.GOOS + "_" + runtime.GOARCH + "/" + file
	raw, err := os.ReadFile(filepath.Join(dist, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pluginDir, file), raw, 0o755); err != nil {
		t.Fatal(err)
	}
	v := startDevVault(t)
	v.vault(t, "plugin", "register", "-sha256="+listed[name], "-version="+version, "-command="+file, "secret", pluginName)
	v.vault(t, "secrets", "enable", "-path=released", "-plugin-version="+version, pluginName)
	var mounts map[string]struct {
		RunningPluginVersion string `json:"running_plugin_version"`
	}
	v.vaultJSON(t, &mounts, "secrets", "list", "-detailed")
	if got := mounts["released/"].RunningPluginVersion; got != version {
		t.Errorf("released artifact runs as %q, want %q", got, version)
	}
	v.vault(t, "path-help", "released/config")
}
