// Package version reports the plugin's version, set at build time:
//
//	go build -ldflags "-X github.com/instacart-vault/vault-plugin-secrets-instacart/version.version=v0.1.0"
package version

// version is overwritten by -ldflags -X; "dev" builds report v0.0.0-dev so
// Vault still sees a valid semantic version.
var version = "v0.0.0-dev"

// Version returns the plugin's semantic version, as Vault's plugin catalog expects (with a leading "v").
func Version() string { return version }
