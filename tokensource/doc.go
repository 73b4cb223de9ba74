// Package tokensource is an [oauth2.TokenSource] of Instacart Connect tokens
// read from Vault's Instacart secrets engine (vault-plugin-secrets-instacart).
//
// An application with a Vault client gets a token, or an *http.Client that
// sends one, in one line:
//
//	src, err := tokensource.New(vaultClient, "instacart/creds/fulfillment")
//	client := tokensource.HTTPClient(ctx, src) // sets Authorization: Bearer <token>
//
// A [Source] reads the creds path once and hands the same token to every
// caller until the token nears its expiry; then one caller re-reads it (see
// [WithEarlyRefresh]) while the others keep using the current token, which is
// still valid. So a process makes one Vault read, and creates one Vault
// lease, per token life, however many requests it sends: about one a day with
// Connect's 24-hour tokens. With the engine's default shared roles every
// reader of a role gets the same token, so Connect sees one token request per
// token life for all of them. Reading creds per request instead creates a
// lease per request. When a role's ttl caps the lease below the token's life,
// the Source renews the lease until the token's expires_at instead of taking
// a new lease (and, for an exclusive role, a new token) per cap.
//
// Which type for which role:
//
//   - client_credentials roles, and fulfillment_user_assertion roles with a
//     fixed user_id: a [Source].
//   - fulfillment_user_assertion roles with allowed_user_ids (the caller
//     names the user): a [Pool], one Source per user id, bounded.
//   - authorization_code roles: an [Exchanger]. A TokenSource cannot serve
//     them: every read needs a fresh, single-use authorization code.
//
// [Source.TokenContext] and [Pool.Token] take a context that bounds how long
// the caller waits; [HTTPClient] passes each request's context.
//
// The Vault client's own token (its login and renewal) stays the
// application's business, as with any use of the Vault API client; Vault
// Agent's auto-auth or api.LifetimeWatcher can keep it alive.
//
// The Vault token needs the paths of examples/policies/app.hcl: read (and,
// for roles that take input, update) on the creds path, and update on
// sys/leases/renew/<mount>/creds/<role>/* and sys/leases/revoke/<mount>/creds/<role>/*
// for renewing capped leases, revoking the lease of a token Connect refused
// and [WithRevokeOnClose]. A Source names the
// lease in the URL (PUT sys/leases/revoke/<lease_id>), never in the body, so
// the policy can confine it to its role's leases.
//
// # Installing
//
// tokensource is a Go module of its own, in the tokensource directory of the
// plugin's repository, so its releases are tagged tokensource/vX.Y.Z (Go's
// form for a module in a subdirectory). None is tagged yet, so
// go get ...@latest finds no version: depend on a commit of the repository
// instead, which Go records as a pseudo-version (v0.0.0-<date>-<commit>):
//
//	go get github.com/instacart-vault/vault-plugin-secrets-instacart/tokensource@<commit>
//
// with <commit> a full or 12-character commit hash of the repository's main
// branch. The first tag will be tokensource/v0.1.0; from then on use
//
//	go get github.com/instacart-vault/vault-plugin-secrets-instacart/tokensource@v0.1.0
//
// What a tag promises: the exported API documented here does not change
// within a minor line (v0.1.x has fixes only); a v0 minor release may change
// it, and says how in the repository's CHANGELOG.md. Each tag names, there,
// the oldest engine release it works with. docs/releasing.md in the
// repository says how tags are cut.
//
// The module depends on github.com/hashicorp/vault/api, golang.org/x/oauth2
// and github.com/hashicorp/golang-lru/v2 (for [Pool]) only, not on the plugin.
//
// # Wrapping
//
// A Source is an [oauth2.TokenSource]: pass it as it is. Do not wrap it in
// [oauth2.ReuseTokenSource] (nor build a client with [oauth2.NewClient] on
// it): those keep a token until 10 seconds before its expiry and so skip the
// Source's early re-read. Where a library wraps it anyway, use
// [oauth2.ReuseTokenSourceWithExpiry] with the Source's early-refresh window
// ([DefaultEarlyRefresh], or what you gave [WithEarlyRefresh]), so the
// wrapper asks the Source whenever the Source would re-read.
//
// # When Connect refuses a token
//
// Connect answers 401 to a token it no longer accepts: an operator flushed
// the role (vault delete <mount>/cache/<role>, which revokes the engine's
// shared token at Connect), the credentials were rotated at Instacart, or an
// exclusive token's lease was revoked. The token is dead, whatever its
// expires_at says. [HTTPClient] then calls [Source.Invalidate]: the Source
// revokes the dead token's lease, reads the creds path once (concurrent 401s
// with the same token share that read) and the request is sent once more
// with the new token. A second 401 is returned to the caller, never retried
// in a loop. Apps that set the header themselves call Invalidate on a 401
// (see its example).
//
// # Through Vault Agent or Vault Proxy
//
// Set VAULT_AGENT_ADDR to the listener of a Vault Agent or Proxy (for
// example http://127.0.0.1:8100); api.DefaultConfig reads it and sends every
// request there. When the listener's api_proxy has use_auto_auth_token (as
// examples/proxy/proxy.hcl in the repository does), leave VAULT_TOKEN unset:
// the Agent or Proxy adds its own token. Leave [WithRevokeOnClose] off behind
// a Proxy's cache, whose cached lease every app reading through it shares.
//
// The Proxy's cache answers a repeated read with the cached lease until that
// lease would have ended, even after the lease is revoked with the lease id
// in the URL (Vault v1.21's cache evicts only for the body form, which the
// app policy denies). So the fresh read after a 401 carries the header
// X-Tokensource-Replaces-Lease: <the dead lease's id>, which makes it a
// different request to the cache: it reaches Vault, and the tokensource
// apps behind the same Proxy that replace the same dead lease share its one
// new lease.
//
// A Source never logs or prints a token, and its errors never contain one.
package tokensource
