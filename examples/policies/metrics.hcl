# Metrics policy: read this mount's metrics and nothing else (for the token
# Prometheus scrapes with, examples/prometheus/prometheus.yml).
path "instacart/metrics" {
  capabilities = ["read"]
}
