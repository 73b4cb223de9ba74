# Vault Proxy for apps that read instacart/creds/<role> often: the lease cache
# answers repeated reads with one cached lease (and one token) instead of a new
# lease per read, and the API proxy adds the auto-auth token, so apps call
# http://127.0.0.1:8100/v1/instacart/creds/<role> without a Vault token.
# Replace the addresses and paths for your environment.
vault {
  address = "http://127.0.0.1:8200"
}

auto_auth {
  method "token_file" {
    config = {
      token_file_path = "/etc/vault-proxy/app-token"
    }
  }
}

cache {}

api_proxy {
  use_auto_auth_token = true
}

listener "tcp" {
  address     = "127.0.0.1:8100"
  tls_disable = true
}
