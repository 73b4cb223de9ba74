//go:build tools

// Package tools pins the Vault server version the end-to-end suite runs against.
// It is a separate module so the plugin's own go.mod stays lean.
package tools

import _ "github.com/hashicorp/vault"
