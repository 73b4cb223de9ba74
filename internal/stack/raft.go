package stack

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// RaftVaultOptions configure StartRaftVault.
type RaftVaultOptions struct {
	Bin       string // the vault binary
	PluginDir string
	Dir       string // holds vault.hcl, vault.log and raft/
	LogLevel  string // default "info"
	// RawStorage turns on sys/raw (raw_storage_endpoint), e.g. to count the
	// entries a mount has stored (RawList).
	RawStorage bool
	// PrometheusRetention, when set (e.g. "1h"), turns on Vault's own
	// Prometheus telemetry (sys/metrics?format=prometheus): cumulative
	// counters, e.g. of raft log entries applied.
	PrometheusRetention string
}

// StartRaftVault runs a single-node Vault server with integrated (raft)
// storage, as production runs, on free loopback ports: every write is a
// durable raft log entry. It initialises the server with one key share,
// unseals it and waits until it is active; Token is the root token. Unseal
// again after a restart with Unseal(UnsealKey).
func StartRaftVault(o RaftVaultOptions) (*Vault, error) {
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	clusterPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("http://127.0.0.1:%d", port)
	data := filepath.Join(o.Dir, "raft")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, fmt.Errorf("raft dir: %w", err)
	}
	hcl := fmt.Sprintf(`
storage "raft" {
  path    = %q
  node_id = "node1"
  performance_multiplier = 1
}
listener "tcp" {
  address         = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_disable     = true
}
api_addr             = %q
cluster_addr         = "https://127.0.0.1:%d"
plugin_directory     = %q
disable_mlock        = true
raw_storage_endpoint = %t
`, data, port, clusterPort, addr, clusterPort, o.PluginDir, o.RawStorage)
	if o.PrometheusRetention != "" {
		hcl += fmt.Sprintf("telemetry {\n  prometheus_retention_time = %q\n}\n", o.PrometheusRetention)
	}
	conf := filepath.Join(o.Dir, "vault.hcl")
	if err := os.WriteFile(conf, []byte(hcl), 0o600); err != nil {
		return nil, fmt.Errorf("vault config: %w", err)
	}
	v := NewVault(o.Bin, addr, filepath.Join(o.Dir, "vault.log"), "server", "-config="+conf, "-log-level="+o.LogLevel)
	if err := v.Start(); err != nil {
		return nil, err
	}
	var init struct {
		Keys      []string `json:"keys_base64"`
		RootToken string   `json:"root_token"`
	}
	if err := v.Must(http.MethodPut, "sys/init", map[string]any{"secret_shares": 1, "secret_threshold": 1}, &init); err != nil {
		v.Stop()
		return nil, fmt.Errorf("initialising raft Vault: %w", err)
	}
	if len(init.Keys) == 0 || init.RootToken == "" {
		v.Stop()
		return nil, errors.New("sys/init returned no unseal key or root token")
	}
	v.Token, v.UnsealKey = init.RootToken, init.Keys[0]
	if err := v.Unseal(v.UnsealKey); err != nil {
		v.Stop()
		return nil, err
	}
	return v, nil
}

// Unseal submits key and waits until the server is active (sys/health 200).
func (v *Vault) Unseal(key string) error {
	if err := v.Must(http.MethodPut, "sys/unseal", map[string]any{"key": key}, nil); err != nil {
		return fmt.Errorf("unsealing: %w", err)
	}
	if err := v.Proc.WaitFor(60*time.Second, "Vault to become active", func() bool {
		st, _, err := v.Call(http.MethodGet, "sys/health", nil, nil)
		return err == nil && st == http.StatusOK
	}); err != nil {
		return errors.New(v.Redact(err.Error()))
	}
	return nil
}

// MountUUID is the uuid of the secrets engine mounted at path (no trailing
// slash): its storage lives under logical/<uuid>/.
func (v *Vault) MountUUID(path string) (string, error) {
	var out struct {
		UUID string `json:"uuid"`
	}
	if err := v.Must(http.MethodGet, "sys/mounts/"+strings.Trim(path, "/"), nil, &out); err != nil {
		return "", err
	}
	if out.UUID == "" {
		return "", fmt.Errorf("sys/mounts/%s: no uuid", path)
	}
	return out.UUID, nil
}

// RawList lists the storage keys under path (ending in "/") through sys/raw,
// which the server must enable (RaftVaultOptions.RawStorage); nothing there
// is an empty list, not an error.
func (v *Vault) RawList(path string) ([]string, error) { return v.listKeys("sys/raw/" + path) }

// ProxyOptions configure StartProxy.
type ProxyOptions struct {
	Bin string // the vault binary
	Dir string // holds proxy.hcl, app-token and proxy.log
	// Example is a committed Vault Proxy config (examples/proxy/proxy.hcl),
	// run as it is but for its placeholders: the Vault address
	// http://127.0.0.1:8200, the token file /etc/vault-proxy/app-token and
	// the listener 127.0.0.1:8100, replaced by VaultAddr, a file holding
	// Token and a free loopback port.
	Example   string
	VaultAddr string
	Token     string // the proxy's auto-auth token; never printed
}

// Proxy is a running `vault proxy`.
type Proxy struct {
	*Proc
	Addr string // http://127.0.0.1:port: send /v1/... here, without a token
}

// proxyPlaceholders are what ProxyOptions.Example must contain.
var proxyPlaceholders = []string{"http://127.0.0.1:8200", "/etc/vault-proxy/app-token", "127.0.0.1:8100"}

// ProxyConfig is the example file at path with its placeholders replaced in
// the order of proxyPlaceholders. A placeholder the file no longer has is an
// error: the caller would otherwise run a config pointing elsewhere.
func ProxyConfig(path, vaultAddr, tokenFile, listen string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("proxy example: %w", err)
	}
	for _, p := range proxyPlaceholders {
		if !strings.Contains(string(b), p) {
			return "", fmt.Errorf("%s no longer has the placeholder %q", path, p)
		}
	}
	return strings.NewReplacer(proxyPlaceholders[0], vaultAddr, proxyPlaceholders[1], tokenFile, proxyPlaceholders[2], listen).Replace(string(b)), nil
}

// StartProxy runs `vault proxy` with the example config (see ProxyOptions)
// and waits until it answers a proxied request with its auto-auth token.
func StartProxy(o ProxyOptions) (*Proxy, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(o.Dir, "app-token")
	if err := os.WriteFile(tokenFile, []byte(o.Token), 0o600); err != nil {
		return nil, fmt.Errorf("proxy token file: %w", err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	cfg, err := ProxyConfig(o.Example, o.VaultAddr, tokenFile, listen)
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(o.Dir, "proxy.hcl")
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	p, err := StartProc("vault proxy", filepath.Join(o.Dir, "proxy.log"), nil, o.Bin, "proxy", "-config="+conf)
	if err != nil {
		return nil, err
	}
	px := &Proxy{Proc: p, Addr: "http://" + listen}
	if err := WaitAutoAuth(p, px.Addr, "Vault Proxy"); err != nil {
		p.Stop()
		return nil, err
	}
	return px, nil
}
