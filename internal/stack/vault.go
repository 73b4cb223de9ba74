package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
)

// Vault is a Vault server process and a client for its HTTP API. Start runs
// (and after Stop, reruns) the same command line.
type Vault struct {
	Addr    string // http://127.0.0.1:port
	Token   string // token for Call and Must; never printed
	Bin     string
	Args    []string
	LogPath string
	Proc    *Proc // the running server; nil before Start
	// Secrets are scrubbed, with Token, from errors and Tail.
	Secrets []string
	Client  *http.Client
	// api talks to Vault through the Vault API client, built once.
	api     *api.Client
	apiErr  error
	apiOnce sync.Once
	// UnsealKey is set by StartRaftVault (one key share); never printed.
	UnsealKey string
}

// NewVault describes a server run as `bin args...` listening on addr; it does
// not start it.
func NewVault(bin, addr, logPath string, args ...string) *Vault {
	return &Vault{Addr: addr, Bin: bin, Args: args, LogPath: logPath, Client: &http.Client{Timeout: 5 * time.Minute}}
}

// Start runs the server and waits until its API answers (sealed or not).
func (v *Vault) Start() error {
	p, err := StartProc("vault", v.LogPath, []string{"VAULT_ADDR=" + v.Addr}, v.Bin, v.Args...)
	if err != nil {
		return err
	}
	v.Proc = p
	if err := p.WaitFor(60*time.Second, "Vault to listen", func() bool {
		resp, err := v.Client.Get(v.Addr + "/v1/sys/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	}); err != nil {
		p.Stop()
		return errors.New(v.Redact(err.Error()))
	}
	return nil
}

// Stop ends the server gracefully (SIGTERM), then kills it if it lingers.
func (v *Vault) Stop() { v.Proc.Stop() }

// Exited reports whether the server has ended.
func (v *Vault) Exited() bool { return v.Proc.Exited() }

// Log is everything the server (and the plugins, whose stderr it relays)
// logged, across restarts.
func (v *Vault) Log() (string, error) {
	b, err := os.ReadFile(v.LogPath)
	if err != nil {
		return "", fmt.Errorf("vault log: %w", err)
	}
	return string(b), nil
}

// Tail is the end of the server log with secrets scrubbed.
func (v *Vault) Tail() string { return v.Redact(v.Proc.Tail()) }

// DevVaultOptions configure StartDevVault.
type DevVaultOptions struct {
	Bin       string // the vault binary
	PluginDir string
	Dir       string // holds vault.hcl and vault.log
	LogLevel  string // default "info"
	// RawStorage turns on sys/raw (raw_storage_endpoint), e.g. to count the
	// entries a mount has stored (RawList).
	RawStorage bool
}

// StartDevVault runs `vault server -dev` on a free loopback port with the
// plugin directory and a random root token, and waits until it is active.
func StartDevVault(o DevVaultOptions) (*Vault, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	addr := fmt.Sprintf("http://127.0.0.1:%d", port)
	token := "root-" + RandomHex(12)
	conf := filepath.Join(o.Dir, "vault.hcl")
	hcl := fmt.Sprintf("plugin_directory = %q\napi_addr = %q\n", o.PluginDir, addr)
	if o.RawStorage {
		hcl += "raw_storage_endpoint = true\n"
	}
	if err := os.WriteFile(conf, []byte(hcl), 0o600); err != nil {
		return nil, fmt.Errorf("vault config: %w", err)
	}
	v := NewVault(o.Bin, addr, filepath.Join(o.Dir, "vault.log"), "server", "-dev",
		"-dev-listen-address=127.0.0.1:"+strconv.Itoa(port), "-dev-root-token-id="+token,
		"-config="+conf, "-log-level="+o.LogLevel)
	v.Token = token
	if err := v.Start(); err != nil {
		return nil, err
	}
	if err := v.Proc.WaitFor(60*time.Second, "Vault to become active", func() bool {
		st, _, err := v.Call(http.MethodGet, "sys/health", nil, nil)
		return err == nil && st == http.StatusOK
	}); err != nil {
		v.Stop()
		return nil, fmt.Errorf("%s", v.Redact(err.Error()))
	}
	return v, nil
}

// Call is one HTTP API request with Token. It returns the status and the raw
// body (which may hold secrets: scrub it with Redact before printing); out is
// decoded from a 2xx answer. Only a failed request or an undecodable answer
// is an error.
func (v *Vault) Call(method, path string, body, out any) (int, string, error) {
	return v.CallAs(v.Token, method, path, body, out)
}

// CallAs is Call with another token ("" for none).
func (v *Vault) CallAs(token, method, path string, body, out any) (int, string, error) {
	v.apiOnce.Do(func() {
		v.api, v.apiErr = api.NewClient(&api.Config{Address: v.Addr, HttpClient: v.Client, MaxRetries: 0})
	})
	if v.apiErr != nil {
		return 0, "", fmt.Errorf("%s %s: %w", method, path, v.apiErr)
	}
	client, err := v.api.Clone() // a token of its own, whatever NewClient read from VAULT_TOKEN
	if err != nil {
		return 0, "", fmt.Errorf("%s %s: %w", method, path, err)
	}
	client.SetToken(token)
	req := client.NewRequest(method, "/v1/"+path)
	if body != nil {
		if err := req.SetJSONBody(body); err != nil {
			return 0, "", fmt.Errorf("%s %s: encoding body: %w", method, path, err)
		}
	}
	// The raw response is what the tests check, error statuses included, so
	// this uses the client's raw request (deprecated for apps, which should
	// use the typed helpers); its error for a status of 400 and up is not a
	// failure here.
	resp, err := client.RawRequestWithContext(context.Background(), req)
	if resp == nil {
		return 0, "", fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, string(raw), fmt.Errorf("%s %s: decoding response: %w", method, path, err)
		}
	}
	return resp.StatusCode, string(raw), nil
}

// Must is Call that fails on any non-2xx status, with secrets scrubbed from
// the error.
func (v *Vault) Must(method, path string, body, out any) error {
	st, raw, err := v.Call(method, path, body, out)
	if err != nil {
		return err
	}
	if st >= 300 {
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, st, v.Redact(strings.TrimSpace(raw)))
	}
	return nil
}

// Redact replaces Token, UnsealKey and Secrets in s.
func (v *Vault) Redact(s string) string {
	for _, sec := range append([]string{v.Token, v.UnsealKey}, v.Secrets...) {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
}

// Version is the server's version string from sys/seal-status.
func (v *Vault) Version() string {
	var out struct {
		Version string `json:"version"`
	}
	if err := v.Must(http.MethodGet, "sys/seal-status", nil, &out); err != nil {
		return "unknown"
	}
	return out.Version
}

// Register adds the secrets plugin pluginDir/name to the catalog by checksum
// (and version, when set).
func (v *Vault) Register(pluginDir, name, version string) error {
	sum, err := FileSHA256(filepath.Join(pluginDir, name))
	if err != nil {
		return err
	}
	body := map[string]any{"sha256": sum, "command": name}
	if version != "" {
		body["version"] = version
	}
	if err := v.Must(http.MethodPut, "sys/plugins/catalog/secret/"+name, body, nil); err != nil {
		return fmt.Errorf("registering %s: %w", name, err)
	}
	return nil
}

// Enable mounts a secrets engine of type typ at path (at a plugin version,
// when set, and with options, when given).
func (v *Vault) Enable(path, typ, version string, options map[string]string) error {
	body := map[string]any{"type": typ}
	if version != "" {
		body["config"] = map[string]any{"plugin_version": version}
	}
	if options != nil {
		body["options"] = options
	}
	if err := v.Must(http.MethodPost, "sys/mounts/"+path, body, nil); err != nil {
		return fmt.Errorf("enabling %s at %s/: %w", typ, path, err)
	}
	return nil
}

// Leases lists the lease ids under prefix (which ends in "/"); none is an
// empty list, not an error.
func (v *Vault) Leases(prefix string) ([]string, error) {
	return v.listKeys("sys/leases/lookup/" + prefix)
}

// listKeys LISTs path; nothing there is an empty list, not an error.
func (v *Vault) listKeys(path string) ([]string, error) {
	var out struct {
		Data struct {
			Keys []string `json:"keys"`
		} `json:"data"`
	}
	st, raw, err := v.Call("LIST", path, nil, &out)
	switch {
	case err != nil:
		return nil, err
	case st == http.StatusNotFound:
		return nil, nil
	case st >= 300:
		return nil, fmt.Errorf("LIST %s: HTTP %d: %s", path, st, v.Redact(raw))
	}
	return out.Data.Keys, nil
}

// WaitAutoAuth waits until a Vault Agent or Proxy at addr (run by p) answers
// a proxied request with its auto-auth token.
func WaitAutoAuth(p *Proc, addr, what string) error {
	client := &http.Client{Timeout: 5 * time.Second}
	return p.WaitFor(30*time.Second, what+" auto-auth", func() bool {
		resp, err := client.Get(addr + "/v1/auth/token/lookup-self")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}
