# Vault Agent: authenticate with a token file, render the role's token to a
# file and re-render it before the lease (= the token's life) runs out.
# Replace the addresses and paths for your environment.
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

# For apps that read creds often: serve one cached lease instead of one per read.
cache {}

listener "tcp" {
  address     = "127.0.0.1:8100"
  tls_disable = true
}
