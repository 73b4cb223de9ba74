package main

// Process harness: builds the plugins and runs the Connect fake, a dev Vault
// and Vault Agent as child processes, on internal/stack (shared with e2e/).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/internal/stack"
)

const (
	pluginName   = "vault-plugin-secrets-instacart"
	pluginVer    = "v0.1.0-bench"
	noopName     = "vault-plugin-secrets-noop"
	oauthappName = "vault-plugin-secrets-oauthapp"
	module       = "github.com/instacart-vault/vault-plugin-secrets-instacart"
	oauthappPkg  = "github.com/puppetlabs/vault-plugin-secrets-oauthapp/v3/cmd/vault-plugin-secrets-oauthapp"
	fakeClientID = "bench-client"
)

// binaries are the build outputs the benchmark runs.
type binaries struct {
	pluginDir string
	// floorPluginDir is scenario 9's: the no-op plugin, and ours built from
	// ./bench/profplugin, so a miss is explained by the plugin's own
	// profile ("" with a prebuilt plugin binary: pluginDir serves).
	floorPluginDir string
	fake           string
	// oauthappErr says why the peer plugin is unavailable (nil when built).
	oauthappErr error
}

// buildAll compiles our plugin, the no-op plugin and the fake into dir, and
// the oauthapp plugin from its own module unless skipped. A failed oauthapp
// build only disables its scenario.
// A prebuilt plugin binary (pluginBin) replaces the build of ours, e.g. to
// measure a release build or a profiling build; it must report pluginVer.
//
// With pluginPprof, ours is built from ./bench/profplugin: the same engine
// with net/http/pprof on a loopback port (see pluginPprofURL). With floor,
// scenario 9 gets that build in a plugin directory of its own, whatever
// pluginPprof says.
func buildAll(ctx context.Context, repo, dir, pluginBin string, withOauthapp, pluginPprof, floor bool) (*binaries, error) {
	b := &binaries{pluginDir: filepath.Join(dir, "plugins"), fake: filepath.Join(dir, "connect-fake")}
	builds := []struct{ out, pkg, ldflags string }{
		{filepath.Join(b.pluginDir, noopName), "./bench/noopplugin", ""},
		{b.fake, "./cmd/connect-fake", ""},
	}
	ldflags := "-X " + module + "/version.version=" + pluginVer
	if pluginBin == "" {
		pkg := "./cmd/" + pluginName
		if pluginPprof {
			pkg = "./bench/profplugin"
		}
		builds = append(builds, struct{ out, pkg, ldflags string }{filepath.Join(b.pluginDir, pluginName), pkg, ldflags})
		if floor {
			b.floorPluginDir = filepath.Join(dir, "plugins-floor")
			builds = append(builds,
				struct{ out, pkg, ldflags string }{filepath.Join(b.floorPluginDir, noopName), "./bench/noopplugin", ""},
				struct{ out, pkg, ldflags string }{filepath.Join(b.floorPluginDir, pluginName), "./bench/profplugin", ldflags})
		}
	} else if err := copyFile(pluginBin, filepath.Join(b.pluginDir, pluginName)); err != nil {
		return nil, err
	}
	for _, bd := range builds {
		if err := stack.GoBuild(ctx, repo, bd.out, bd.pkg, bd.ldflags); err != nil {
			return nil, err
		}
	}
	if !withOauthapp {
		b.oauthappErr = errors.New("skipped in -smoke mode")
		return b, nil
	}
	// The peer plugin's dependency graph lives in bench/oauthapp/go.mod so the
	// root module never gains its dependencies.
	if err := stack.GoBuild(ctx, filepath.Join(repo, "bench", "oauthapp"), filepath.Join(b.pluginDir, oauthappName), oauthappPkg, ""); err != nil {
		b.oauthappErr = err
	}
	return b, nil
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	defer src.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return fmt.Errorf("plugin dir: %w", err)
	}
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return fmt.Errorf("copying plugin binary: %w", err)
	}
	return dst.Close()
}

// vault is the shared dev Vault plus the lease queries the scenarios use.
type vault struct{ *stack.Vault }

// startDevVault runs `vault server -dev` on a free loopback port with the
// given plugin directory and a random root token.
func startDevVault(bin, pluginDir, dir string) (*vault, error) {
	v, err := stack.StartDevVault(stack.DevVaultOptions{Bin: bin, PluginDir: pluginDir, Dir: dir, LogLevel: "warn"})
	if err != nil {
		return nil, err
	}
	return &vault{v}, nil
}

// revokePrefix revokes every lease under prefix and waits for it. The API
// refuses a trailing slash but Vault adds one itself, so "creds/bench" does
// not also match "creds/bench-excl".
func (v *vault) revokePrefix(prefix string) error {
	return v.Must(http.MethodPut, "sys/leases/revoke-prefix/"+strings.TrimSuffix(prefix, "/"), map[string]any{"sync": true}, nil)
}

// ---------------------------------------------------------------------------
// Vault Agent, with its lease cache in front of the API.

type agent struct {
	*stack.Proc
	Addr string
}

// startAgent runs `vault agent` with auto-auth from a token file, the lease
// cache and an API proxy that injects the auto-auth token.
func startAgent(bin string, v *vault, dir, token string) (*agent, error) {
	port, err := stack.FreePort()
	if err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(dir, "agent-token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return nil, fmt.Errorf("agent token file: %w", err)
	}
	hcl := fmt.Sprintf(`
vault {
  address = %q
}
auto_auth {
  method "token_file" {
    config = {
      token_file_path = %q
    }
  }
}
cache {}
api_proxy {
  use_auto_auth_token = true
}
listener "tcp" {
  address     = "127.0.0.1:%d"
  tls_disable = true
}
`, v.Addr, tokenFile, port)
	conf := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(conf, []byte(hcl), 0o600); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	p, err := stack.StartProc("vault agent", filepath.Join(dir, "agent.log"), nil, bin, "agent", "-config="+conf, "-log-level=info")
	if err != nil {
		return nil, err
	}
	a := &agent{Proc: p, Addr: fmt.Sprintf("http://127.0.0.1:%d", port)}
	// Ready once a proxied request succeeds with the auto-auth token.
	if err := stack.WaitAutoAuth(p, a.Addr, "Vault Agent"); err != nil {
		p.Stop()
		return nil, err
	}
	return a, nil
}

// ---------------------------------------------------------------------------
// Plugin process memory.

// findPluginPID finds the process running binary whose parent is parent
// (the Vault server that started it: both servers run our plugin from the
// same directory).
func findPluginPID(binary string, parent int) (int, error) {
	procs, err := stack.Procs(func(argv0 string) bool { return argv0 == binary })
	if err != nil {
		return 0, err
	}
	for _, p := range procs {
		if p.PPid == parent {
			return p.Pid, nil
		}
	}
	return 0, fmt.Errorf("no child of pid %d runs %s", parent, binary)
}
