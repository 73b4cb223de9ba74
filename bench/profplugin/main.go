// Command profplugin is our plugin (the root package's Factory, served as
// cmd/vault-plugin-secrets-instacart serves it) with net/http/pprof on a
// loopback port, for the benchmark's -plugin-pprof: it writes the port's
// address to <its own path>.pprof-<pid>, where the benchmark finds it.
package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // the profiling endpoints, on http.DefaultServeMux
	"os"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/plugin"

	instacart "github.com/instacart-vault/vault-plugin-secrets-instacart"
)

func main() {
	meta := &api.PluginAPIClientMeta{}
	if err := meta.FlagSet().Parse(os.Args[1:]); err != nil {
		fatal(err)
	}
	if err := servePprof(); err != nil {
		fatal(err)
	}
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: instacart.Factory,
		TLSProviderFunc:    api.VaultPluginTLSProvider(meta.GetTLSConfig()),
	})
	if err != nil {
		fatal(err)
	}
}

// servePprof listens on a free loopback port and names it in a file beside
// the binary.
func servePprof() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	if err := os.WriteFile(fmt.Sprintf("%s.pprof-%d", exe, os.Getpid()), []byte("http://"+ln.Addr().String()), 0o600); err != nil {
		return err
	}
	go http.Serve(ln, nil) //nolint:errcheck // lives as long as the process
	return nil
}

func fatal(err error) {
	hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
	os.Exit(1)
}
