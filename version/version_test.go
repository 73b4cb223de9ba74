package version

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// semver is the Makefile's versioncheck: what Vault's catalog accepts, with a
// leading v.
var semver = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$`)

// TestScriptReadsTheSource: make build's default VERSION (scripts/version.sh)
// is what an unstamped build reports, so the two cannot drift apart.
func TestScriptReadsTheSource(t *testing.T) {
	out, err := exec.Command("../scripts/version.sh").Output()
	if err != nil {
		t.Fatalf("scripts/version.sh: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != Version() {
		t.Errorf("scripts/version.sh prints %q, the unstamped build reports %q", got, Version())
	}
	if !semver.MatchString(Version()) {
		t.Errorf("version %q is not a semantic version with a leading v", Version())
	}
}
