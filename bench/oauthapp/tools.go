//go:build tools

// Package oauthapp pins the peer plugin the benchmark compares against; the
// benchmark builds its main package from this module's module graph.
package oauthapp

import _ "github.com/puppetlabs/vault-plugin-secrets-oauthapp/v3/cmd/vault-plugin-secrets-oauthapp"
