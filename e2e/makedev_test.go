//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMakeDevRecipes starts scripts/demo.sh dev (what make dev runs) and runs
// every block of the docs whose heading says "on `make dev`", in order, word
// for word, in the environment make dev writes to .bin/dev/env. The one
// mapping is .bin/ itself: the script runs on the suite's build (DEMO_BIN),
// and make build writes there too (BIN), so .bin/plugins is the dev Vault's
// plugin directory as it is on a real make dev. Blocks that start daemons
// (Agent, Proxy, Prometheus) with & run in a process group the test ends; the
// block after one is retried for a while, as a person would wait for the
// daemon to come up. Last, kill <pid> as the printout says must stop
// everything and exit 0.
func TestMakeDevRecipes(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run the make dev recipes")
	}
	_, promErr := exec.LookPath("prometheus")
	bin := t.TempDir()
	if err := os.Mkdir(filepath.Join(bin, "plugins"), 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(pluginDir, pluginFile(oldVersion)), filepath.Join(bin, "plugins", pluginFile(oldVersion)))
	for name, target := range map[string]string{"vault": vaultBin, "connect-fake": fakeBin} {
		if err := os.Symlink(target, filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}

	out, err := os.Create(filepath.Join(bin, "dev-output.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	dev := exec.Command("bash", filepath.Join(repoRoot, "scripts", "demo.sh"), "dev")
	dev.Dir = repoRoot
	dev.Env = makeEnv("DEMO_BIN="+bin, "VERSION="+oldVersion, "INSTACART_BASE_URL=", "CI=true")
	dev.Stdout, dev.Stderr = out, out
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- dev.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = dev.Process.Signal(syscall.SIGTERM)
			<-exited
		}
	})
	printed := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	waitFor(t, 3*time.Minute, "make dev to be ready", func() bool {
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("scripts/demo.sh dev ended (%v):\n%s", err, printed())
		default:
		}
		return strings.Contains(printed(), "To stop:")
	})
	if want := fmt.Sprintf("kill %d", dev.Process.Pid); !strings.Contains(printed(), want) {
		t.Errorf("make dev's printout does not say %q:\n%s", want, printed())
	}
	if !strings.Contains(printed(), "vault lease revoke -prefix instacart/creds/fulfillment") {
		t.Errorf("make dev's printout does not suggest the per-role lease revocation the operator policy allows:\n%s", printed())
	}

	// The environment `source .bin/dev/env` gives.
	envOut, err := exec.Command("bash", "-c", `source "$1" && env -0`, "bash", filepath.Join(bin, "dev", "env")).Output()
	if err != nil {
		t.Fatalf("source .bin/dev/env: %v", err)
	}
	env := strings.Split(strings.TrimRight(string(envOut), "\x00"), "\x00")
	env = append(env, "MAKEFLAGS=BIN="+bin)
	var vaultToken, vaultAddr string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "VAULT_TOKEN="); ok {
			vaultToken = v
		}
		if v, ok := strings.CutPrefix(kv, "VAULT_ADDR="); ok {
			vaultAddr = v
		}
	}
	// The root token reaches Vault by environment: no process's argv, which
	// any local user can read, shows it.
	if vaultToken == "" || vaultAddr == "" {
		t.Fatal(".bin/dev/env sets no VAULT_TOKEN or VAULT_ADDR")
	}
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, c := range cmdlines {
		if b, err := os.ReadFile(c); err == nil && strings.Contains(string(b), vaultToken) {
			t.Errorf("%s shows make dev's root token in argv", c)
		}
	}
	repl := strings.NewReplacer(".bin/", bin+"/")

	var pgids []int
	t.Cleanup(func() {
		for _, pg := range pgids {
			_ = syscall.Kill(-pg, syscall.SIGTERM)
		}
	})
	run := func(block string) (string, string, error) {
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", repl.Replace(block))
		cmd.Dir = repoRoot
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		var so, se bytes.Buffer
		cmd.Stdout, cmd.Stderr = &so, &se
		if err := cmd.Start(); err != nil {
			return "", "", err
		}
		pgids = append(pgids, cmd.Process.Pid)
		err := cmd.Wait()
		return so.String(), se.String(), err
	}

	ran, daemonsStarted := 0, false
	var blocks []readmeBlock
	for _, b := range readmeBlocks(t) {
		if strings.Contains(b.heading, makeDevMark) {
			blocks = append(blocks, b)
		}
	}
	if len(blocks) < 8 {
		t.Fatalf("found only %d blocks on `make dev`; want the upgrade, code, Agent and Proxy, policies, rotation and Prometheus recipes", len(blocks))
	}
	for i, b := range blocks {
		if strings.Contains(b.body, "prometheus") && promErr != nil {
			t.Errorf("block %d (under %q) needs prometheus, which is not installed (make prometheus)", i+1, b.heading)
			continue
		}
		deadline := time.Now()
		if daemonsStarted {
			deadline = deadline.Add(90 * time.Second) // Prometheus' first scrape, Agent's first render
		}
		var stdout, stderr string
		for {
			stdout, stderr, err = run(b.body)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		daemonsStarted = strings.Contains(b.body, "&\n")
		if err != nil {
			t.Errorf("block %d on make dev (under %q) failed (%v):\n%s\nstdout:\n%s\nstderr:\n%s", i+1, b.heading, err, b.body, stdout, stderr)
			continue
		}
		if vaultToken != "" && strings.Contains(stdout+stderr, vaultToken) {
			t.Errorf("block %d on make dev printed the Vault token", i+1)
		}
		switch {
		case strings.Contains(b.body, "running_plugin_version"):
			if f := strings.Fields(stdout); len(f) == 0 || f[len(f)-1] != newVersion {
				t.Errorf("the upgrade on make dev ends printing %q, want %s", stdout, newVersion)
			}
		case strings.Contains(b.body, "wc -c < .bin/dev/instacart-token"):
			lines := strings.Split(strings.TrimSpace(stdout), "\n")
			if len(lines) < 3 || strings.TrimSpace(lines[0]) == "0" || lines[1] != lines[2] || !strings.Contains(lines[1], "instacart/creds/fulfillment/") {
				t.Errorf("Agent's file and two reads through Proxy (one lease) printed:\n%s", stdout)
			}
		}
		ran++
	}
	t.Logf("ran %d of %d blocks on make dev", ran, len(blocks))

	// kill <pid>, as the printout says: everything stops, and the exit is 0.
	if err := dev.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("kill of make dev's pid: %v, want exit 0\n%s", err, printed())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("make dev did not stop within 30 s of kill")
	}
	status := exec.Command(vaultBin, "status")
	status.Env = append(os.Environ(), "VAULT_ADDR="+vaultAddr)
	if out, err := status.CombinedOutput(); err == nil {
		t.Errorf("make dev's Vault still answers after kill:\n%s", out)
	}
	// What only that Vault could use is gone with it; the configs stay.
	for _, f := range []string{"env", "app-token", "prometheus-token", "instacart-token"} {
		if _, err := os.Stat(filepath.Join(bin, "dev", f)); !os.IsNotExist(err) {
			t.Errorf(".bin/dev/%s after make dev stopped: %v, want it removed", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(bin, "dev", "agent.hcl")); err != nil {
		t.Errorf(".bin/dev/agent.hcl after make dev stopped: %v, want it kept", err)
	}
}
