# Operator policy: configure the engine, manage roles and cached tokens, and read its metrics.
# Assumes the engine is mounted at instacart/.
path "instacart/config" {
  capabilities = ["create", "read", "update", "delete"]
}

path "instacart/roles" {
  capabilities = ["list"]
}

path "instacart/roles/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

path "instacart/cache/*" {
  capabilities = ["delete"]
}

path "instacart/metrics" {
  capabilities = ["read"]
}
