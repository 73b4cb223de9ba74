# Operator policy: configure the engine and manage roles and cached tokens.
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
