//go:build e2e

package e2e

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/instacart-vault/vault-plugin-secrets-instacart/version"
)

// TestMakeDemo runs `make demo` as a newcomer would and checks it walks every
// grant, proves revocation upstream, stops cleanly and prints no token.
func TestMakeDemo(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("make", "demo")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CI=true")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make demo: %v\n%s", err, out)
	}
	text := string(out)
	// make demo registers the version make build stamps by default: the
	// source's, which an unstamped test binary reports.
	for _, want := range []string{
		"Registering the plugin", "vault-plugin-secrets-instacart    " + version.Version(),
		"client_credentials", "fulfillment_user_assertion", "authorization_code",
		"HTTP 200 OK", "HTTP 401 Unauthorized", "demo complete",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	// Tokens are 43 URL-safe base64 characters; none may be printed.
	if tok := regexp.MustCompile(`\b[A-Za-z0-9_-]{43}\b`).FindString(text); tok != "" {
		t.Errorf("demo output contains something shaped like an access token")
	}
}
