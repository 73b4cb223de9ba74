# Vault Agent: authenticate with a token file, render the role's token to a
# file and re-render it before the lease (= the token's life) runs out.
# Replace the addresses and paths for your environment.
#
# Paths are absolute on purpose: Agent resolves a relative template `source`
# against the directory it was started from, not against this file, so
# `vault agent -config=examples/agent/agent.hcl` from the repository root
# would not find a bare "instacart-token.ctmpl". Install this file and the
# template side by side in /etc/vault-agent/ (or edit the paths), then run
# `vault agent -config=/etc/vault-agent/agent.hcl` from any directory.
#
# Agent logs a warning like this after each read, when it renews the lease:
#   vault.read(instacart/creds/fulfillment): TTL of "23h59m59s" exceeded the
#   effective max_ttl of "23h59m58.99s"; TTL value is capped accordingly
# Harmless. A lease may not outlive the Connect token it holds, so the engine
# answers a renewal with the token's remaining life (whole seconds) and a
# max_ttl that ends a second before the token expires; Vault trims the
# renewal to that max_ttl and says so. Agent re-renders before the lease ends
# either way. (Vault caps a lease the same way, with the same warning, when it
# would outlive the mount's max_lease_ttl or the role's max_ttl.)
#
# After a flush (`vault delete instacart/cache/<role>`, for a leaked token),
# Agent re-renders when it next renews the lease, which the engine then
# refuses: give the role a ttl (ttl=5m) so that is within minutes, not hours.
# To re-render at once, restart Agent (a SIGHUP reloads only its log level
# and TLS certificates, not its templates).
#
# No `cache {}` here on purpose: with a cache, the template's lease renewals go
# through it, and the cache answers a repeated renewal with the first one's
# TTL, so the template can sleep past the token's expiry. Serve read-heavy
# apps from a separate Vault Proxy (examples/proxy/proxy.hcl) instead.
vault {
  address = "http://127.0.0.1:8200"
}

auto_auth {
  method "token_file" {
    config = {
      token_file_path = "/etc/vault-agent/app-token"
    }
  }
}

template {
  source      = "/etc/vault-agent/instacart-token.ctmpl"
  destination = "/run/app/instacart-token"
  perms       = "0600"
}
