// Package version reports the plugin's version.
//
// The version below is the one source of truth: `make build` and
// `make release` stamp it (scripts/version.sh reads it), and a plain
// `go build` reports it as it is. Between releases it is the next release's
// number with a -dev suffix, a semantic pre-release that sorts before the
// release, so no build of unreleased code claims a released number. Only the
// release commit sets the released number (docs/releasing.md). A build can
// still be stamped otherwise for a test:
//
//	go build -ldflags "-X github.com/instacart-vault/vault-plugin-secrets-instacart/version.version=v0.2.0-dev.1"
package version

// version is overwritten by -ldflags -X; scripts/version.sh reads this line.
var version = "v0.2.0-dev"

// Version returns the plugin's semantic version, as Vault's plugin catalog expects (with a leading "v").
func Version() string { return version }
