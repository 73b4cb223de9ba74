# Vault Proxy for apps that read instacart/creds/<role> often: the lease cache
# answers repeated reads with one cached lease (and one token) instead of a new
# lease per read, and the API proxy adds the auto-auth token, so apps call
# http://127.0.0.1:8100/v1/instacart/creds/<role> without a Vault token.
# Replace the addresses and paths for your environment.
#
# After a flush (`vault delete instacart/cache/<role>`, for a leaked token),
# Proxy keeps serving the cached token until it next renews the lease, which
# the engine then refuses: give the role a ttl (ttl=5m) so that is within
# minutes, not hours. To drop the role's cached reads at once, after the flush:
#   curl -sSf -X POST -d '{"type":"request_path","value":"/v1/instacart/creds/<role>"}' \
#       http://127.0.0.1:8100/proxy/v1/cache-clear
# That endpoint takes no Vault token: keep the listener on loopback.
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
