//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestUpstreamFaultsThroughVault injects Connect failures under a real Vault:
// transient ones are retried, a dead Connect still leaves readers with the
// cached token, a hung Connect cannot hold a request past request_timeout, and
// a revocation that fails is retried until it succeeds.
func TestUpstreamFaultsThroughVault(t *testing.T) {
	f := startFake(t, 24*time.Hour)
	v := startDevVault(t)
	v.installPlugin(t, f)
	v.vault(t, "write", "instacart/config", "request_timeout=2s", "max_retries=2")
	v.vault(t, "write", "instacart/roles/shared", "grant_type=client_credentials", "scopes=connect:fulfillment")
	v.vault(t, "write", "instacart/roles/excl", "grant_type=client_credentials", "token_reuse=exclusive")
	injected := 0
	inject := func(path string, faults ...map[string]any) {
		f.InjectFaults(t, path, faults...)
		for _, fault := range faults {
			injected += max(1, toInt(fault["repeat"]))
		}
	}
	// Each subtest starts with no fault left over from the previous one.
	clearFaults := func() { check(t, f.ClearFaults()) }

	t.Cleanup(clearFaults)
	t.Run("429 and 503 with Retry-After are retried", func(t *testing.T) {
		inject("/v2/oauth/token", map[string]any{"status": 429, "retry_after": "1"}, map[string]any{"status": 503})
		start := time.Now()
		var c creds
		v.vaultJSON(t, &c, "read", "instacart/creds/excl")
		if f.Users(t, c.Data.AccessToken) != 200 {
			t.Error("token does not work")
		}
		if time.Since(start) < time.Second {
			t.Errorf("Retry-After: 1 not honoured (answered in %v)", time.Since(start))
		}
	})

	clearFaults()
	t.Run("hung Connect answers within request_timeout x attempts", func(t *testing.T) {
		inject("/v2/oauth/token", map[string]any{"hang": true, "repeat": 3})
		start := time.Now()
		_, errOut, code := v.cli(t, v.Token, "", "read", "instacart/creds/excl")
		elapsed := time.Since(start)
		if code == 0 {
			t.Fatal("read succeeded against a hung Connect")
		}
		if elapsed > 10*time.Second {
			t.Errorf("took %v; 3 attempts of 2s should end well before", elapsed)
		}
		if !strings.Contains(errOut, "Connect") {
			t.Errorf("error does not mention Connect: %s", errOut)
		}
		t.Logf("hung upstream: error after %v", elapsed.Round(time.Millisecond))
	})

	clearFaults()
	t.Run("Connect down: the cached shared token is still served", func(t *testing.T) {
		// A 12s token is due for replacement once less than half its life
		// is left; take Connect down in that window.
		f.SetLifetime(t, 12*time.Second)
		defer f.SetLifetime(t, 24*time.Hour)
		v.vault(t, "delete", "instacart/cache/shared")
		var first creds
		v.vaultJSON(t, &first, "read", "instacart/creds/shared")
		time.Sleep(time.Until(first.expiresAt(t).Add(-5 * time.Second)))
		inject("/v2/oauth/token", map[string]any{"status": 503, "repeat": 3})
		var during creds
		v.vaultJSON(t, &during, "read", "instacart/creds/shared")
		if during.Data.AccessToken != first.Data.AccessToken || len(during.Warnings) == 0 {
			t.Errorf("want the cached token with a warning; warnings %v", during.Warnings)
		}
	})

	clearFaults()
	t.Run("revocation while Connect is down is retried", func(t *testing.T) {
		var c creds
		v.vaultJSON(t, &c, "read", "instacart/creds/excl")
		// max_retries=2: the lease revocation's three attempts all fail.
		inject("/v2/oauth/token/revoke", map[string]any{"status": 503, "repeat": 3})
		// The lease ends (no stranded lease): the token Connect could not
		// revoke now waits in the role's revocation queue.
		v.vault(t, "lease", "revoke", "-sync", c.LeaseID)
		if left := v.leases(t, "instacart/creds/excl/"); slices.Contains(left, path.Base(c.LeaseID)) {
			t.Error("the lease is still there after a revocation Connect could not take")
		}
		if f.Users(t, c.Data.AccessToken) != 200 {
			t.Fatal("token died although revocation failed")
		}
		// Connect is back: the queue is retried every minute and by a
		// flush of the role, which revokes it now.
		v.vault(t, "delete", "instacart/cache/excl")
		if st := f.Users(t, c.Data.AccessToken); st != 401 {
			t.Errorf("token still works after recovery and the queue's retry (%d)", st)
		}
	})
	clearFaults()
	t.Run("reset connection and broken answers", func(t *testing.T) {
		inject("/v2/oauth/token", map[string]any{"reset": true})
		var c creds
		v.vaultJSON(t, &c, "read", "instacart/creds/excl") // the reset attempt is retried
		if f.Users(t, c.Data.AccessToken) != 200 {
			t.Error("token after a reset does not work")
		}
		for _, body := range []string{`{"access_token":`, `{"access_token":"x","token_type":"Bearer","expires_in":0}`, `<html>502</html>`} {
			inject("/v2/oauth/token", map[string]any{"status": 200, "body": body, "repeat": 3})
			_, errOut, code := v.cli(t, v.Token, "", "read", "instacart/creds/excl")
			if code == 0 || !strings.Contains(errOut, "Code: 502") {
				t.Errorf("broken 200 answer: exit %d, want a 502: %s", code, errOut)
			}
			clearFaults()
		}
	})

	t.Run("connection refused", func(t *testing.T) {
		closed := freePort(t) // nothing listens there
		// A move to another host carries its secret (the stored one never follows).
		v.vault(t, "write", "instacart/config", "base_url=http://127.0.0.1:"+strconv.Itoa(closed), "client_secret=@"+f.SecretFile(), "verify=false")
		defer v.vault(t, "write", "instacart/config", "base_url="+f.URL, "client_secret=@"+f.SecretFile(), "verify=false")
		start := time.Now()
		_, errOut, code := v.cli(t, v.Token, "", "read", "instacart/creds/excl")
		if code == 0 || !strings.Contains(errOut, "connection refused") {
			t.Errorf("exit %d, want an error saying connection refused: %s", code, errOut)
		}
		if time.Since(start) > 10*time.Second {
			t.Errorf("took %v", time.Since(start))
		}
		injected++
	})
	t.Logf("%d faults injected through Vault; every read either succeeded with a working token or failed cleanly", injected)
	assertNoSecrets(t, "Vault server log", v.Log(t), f.Secret(), nil)
}

func toInt(v any) int {
	i, _ := v.(int)
	return i
}

// TestRaftFailover runs a 3-node raft cluster on loopback: after the active
// node dies, the new active node serves the same shared token without a new
// mint, and an exclusive lease issued before the failover still revokes.
func TestRaftFailover(t *testing.T) {
	t.Parallel()
	f := startFake(t, 24*time.Hour)
	nodes := startRaftCluster(t, 3)
	leader := nodes[0]
	leader.installPlugin(t, f)
	leader.vault(t, "write", "instacart/roles/shared", "grant_type=client_credentials", "scopes=connect:fulfillment")
	leader.vault(t, "write", "instacart/roles/excl", "grant_type=client_credentials", "token_reuse=exclusive")
	var shared, excl creds
	leader.vaultJSON(t, &shared, "read", "instacart/creds/shared")
	leader.vaultJSON(t, &excl, "read", "instacart/creds/excl")
	mints := f.Mints(t)

	leader.Stop()
	var active *vault
	waitFor(t, 60*time.Second, "a new active node", func() bool {
		for _, n := range nodes[1:] {
			st, _ := n.api(t, http.MethodGet, "sys/health", nil, nil)
			if st == 200 {
				active = n
				return true
			}
		}
		return false
	})
	var again creds
	waitFor(t, 30*time.Second, "creds from the new active node", func() bool {
		out, _, code := active.cli(t, active.Token, "", "read", "-format=json", "instacart/creds/shared")
		return code == 0 && json.Unmarshal([]byte(out), &again) == nil
	})
	if again.Data.AccessToken != shared.Data.AccessToken {
		t.Error("the new active node handed out a different shared token")
	}
	if got := f.Mints(t) - mints; got != 0 {
		t.Errorf("failover caused %d new mints", got)
	}
	active.vault(t, "lease", "revoke", "-sync", excl.LeaseID)
	if st := f.Users(t, excl.Data.AccessToken); st != 401 {
		t.Errorf("exclusive token from before the failover still works after revoke (%d)", st)
	}
}

// startRaftCluster starts n raft nodes on loopback, initialises the first,
// joins and unseals the others. All share the root token and unseal key.
func startRaftCluster(t *testing.T, n int) []*vault {
	t.Helper()
	nodes := make([]*vault, n)
	apiPorts := make([]int, n)
	for i := range nodes {
		apiPorts[i] = freePort(t)
	}
	for i := range nodes {
		clusterPort := freePort(t)
		v := newVault(t, apiPorts[i])
		dir := v.dir
		var join strings.Builder
		for j := range nodes {
			if j != i {
				fmt.Fprintf(&join, "  retry_join { leader_api_addr = %q }\n", fmt.Sprintf("http://127.0.0.1:%d", apiPorts[j]))
			}
		}
		hcl := fmt.Sprintf(`
storage "raft" {
  path    = %q
  node_id = "node%d"
  performance_multiplier = 1
%s}
listener "tcp" {
  address         = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_disable     = true
}
api_addr         = %q
cluster_addr     = "https://127.0.0.1:%d"
plugin_directory = %q
disable_mlock    = true
log_level        = "debug"
`, filepath.Join(dir, "raft"), i+1, join.String(), apiPorts[i], clusterPort, v.Addr, clusterPort, pluginDir)
		if err := os.MkdirAll(filepath.Join(dir, "raft"), 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, "vault.hcl"), hcl)
		v.start(t)
		nodes[i] = v
	}
	// Initialise node 1 and unseal it; it becomes the leader.
	var initResp struct {
		Keys      []string `json:"keys_base64"`
		RootToken string   `json:"root_token"`
	}
	nodes[0].mustAPI(t, http.MethodPut, "sys/init", map[string]any{"secret_shares": 1, "secret_threshold": 1}, &initResp)
	if len(initResp.Keys) == 0 {
		t.Fatal("sys/init returned no key")
	}
	for _, v := range nodes {
		v.Token = initResp.RootToken
		writeFile(t, filepath.Join(v.dir, "unseal.key"), initResp.Keys[0])
	}
	nodes[0].unseal(t)
	// The others join through retry_join once they can be unsealed.
	for _, v := range nodes[1:] {
		waitFor(t, 60*time.Second, v.Addr+" to join and unseal", func() bool {
			var st struct {
				Sealed      bool `json:"sealed"`
				Initialized bool `json:"initialized"`
			}
			v.api(t, http.MethodPut, "sys/unseal", map[string]any{"key": initResp.Keys[0]}, nil)
			v.api(t, http.MethodGet, "sys/seal-status", nil, &st)
			return st.Initialized && !st.Sealed
		})
	}
	var peers struct {
		Data struct {
			Config struct {
				Servers []struct {
					NodeID string `json:"node_id"`
					Voter  bool   `json:"voter"`
				} `json:"servers"`
			} `json:"config"`
		} `json:"data"`
	}
	waitFor(t, 60*time.Second, "3 raft voters", func() bool {
		nodes[0].api(t, http.MethodGet, "sys/storage/raft/configuration", nil, &peers)
		voters := 0
		for _, s := range peers.Data.Config.Servers {
			if s.Voter {
				voters++
			}
		}
		return voters == n
	})
	return nodes
}
