# Vault Agent: authenticate with a token file, render the role's token to a
# file and re-render it before the lease (= the token's life) runs out.
# Replace the addresses and paths for your environment.
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
  source      = "instacart-token.ctmpl"
  destination = "/run/app/instacart-token"
  perms       = "0600"
}
