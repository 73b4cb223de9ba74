module github.com/instacart-vault/vault-plugin-secrets-instacart/tools/dashboard

go 1.25.1

require github.com/grafana/grafana-foundation-sdk/go v0.0.22
