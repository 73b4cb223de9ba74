package stack

import (
	"path/filepath"
	"strings"
	"testing"
)

// The committed Vault Proxy example keeps the placeholders StartProxy (the
// benchmark) replaces, and nothing of them is left after.
func TestProxyConfigFromExample(t *testing.T) {
	example := filepath.Join("..", "..", "examples", "proxy", "proxy.hcl")
	cfg, err := ProxyConfig(example, "http://127.0.0.1:1234", "/tmp/x/app-token", "127.0.0.1:5678")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`address = "http://127.0.0.1:1234"`, `token_file_path = "/tmp/x/app-token"`, `address     = "127.0.0.1:5678"`, "cache {}", "use_auto_auth_token = true"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	for _, p := range proxyPlaceholders {
		if strings.Contains(cfg, p) {
			t.Errorf("placeholder %q left in the config", p)
		}
	}
	if _, err := ProxyConfig(filepath.Join(t.TempDir(), "none.hcl"), "a", "b", "c"); err == nil {
		t.Error("a missing example file is not an error")
	}
}
