//go:build e2e

package e2e

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

// TestSharedTokenSurvivesRestartKillAndReload runs a real (non-dev) Vault on
// file storage: the shared token is kept in the mount's storage, so a Vault
// restart, a killed plugin process and a plugin reload all serve the same
// token without a new mint.
func TestSharedTokenSurvivesRestartKillAndReload(t *testing.T) {
	f := startFake(t, 24*time.Hour)
	v := startFileVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/roles/fulfillment", "grant_type=client_credentials", "scopes=connect:fulfillment")

	var first creds
	v.vaultJSON(t, &first, "read", "instacart/creds/fulfillment")
	mints := f.Mints(t)

	sameToken := func(t *testing.T, when string) {
		t.Helper()
		var c creds
		v.vaultJSON(t, &c, "read", "instacart/creds/fulfillment")
		if c.Data.AccessToken != first.Data.AccessToken {
			t.Errorf("%s: a different token was handed out", when)
		}
		if got := f.Mints(t); got != mints {
			t.Errorf("%s: %d new mints at Connect, want 0", when, got-mints)
		}
		if st := f.Users(t, c.Data.AccessToken); st != 200 {
			t.Errorf("%s: Connect answered %d to the token", when, st)
		}
	}

	t.Run("vault restart", func(t *testing.T) {
		v.restart(t)
		sameToken(t, "after restart")
	})

	t.Run("plugin process killed", func(t *testing.T) {
		pids := pluginPIDs(t)
		if len(pids) == 0 {
			t.Fatal("no running plugin process found")
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 10*time.Second, "the plugin process to die", func() bool {
			for _, pid := range pids {
				if stack.Alive(pid) {
					return false
				}
			}
			return true
		})
		sameToken(t, "after the plugin was killed")
		if after := pluginPIDs(t); len(after) == 0 || after[0] == pids[0] {
			t.Errorf("plugin not relaunched: before %v, after %v", pids, after)
		}
	})

	t.Run("plugin reload", func(t *testing.T) {
		v.vault(t, "plugin", "reload", "-type=secret", "-plugin="+pluginName)
		sameToken(t, "after plugin reload")
	})

	t.Run("exclusive lease minted before a restart still revokes", func(t *testing.T) {
		v.vault(t, "write", "instacart/roles/exclusive", "grant_type=client_credentials", "token_reuse=exclusive")
		var c creds
		v.vaultJSON(t, &c, "read", "instacart/creds/exclusive")
		v.restart(t)
		v.vault(t, "lease", "revoke", "-sync", c.LeaseID)
		if st := f.Users(t, c.Data.AccessToken); st != 401 {
			t.Errorf("token still works after its lease was revoked across a restart (%d)", st)
		}
	})
	assertNoSecrets(t, "Vault server log", v.Log(t), f.Secret(), []string{first.Data.AccessToken})
}

// pluginPIDs finds running processes of this suite's plugin binaries.
func pluginPIDs(t testing.TB) []int {
	t.Helper()
	procs, err := suitePluginProcs()
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, p := range procs {
		pids = append(pids, p.Pid)
	}
	return pids
}

// suitePluginProcs lists the live processes of this suite's plugin binaries,
// in any plugin directory under suiteTmp.
func suitePluginProcs() ([]stack.ProcInfo, error) {
	return stack.Procs(func(argv0 string) bool {
		return strings.HasPrefix(argv0, suiteTmp+string(filepath.Separator)) && strings.HasPrefix(filepath.Base(argv0), pluginName)
	})
}
