# Operator policy: configure the engine, manage roles and cached tokens, tidy,
# read its metrics, and list, renew and revoke the leases of its tokens.
# It cannot read tokens. Assumes the engine is mounted at instacart/.
path "instacart/config" {
  capabilities = ["create", "read", "update", "delete"]
}

path "instacart/roles" {
  capabilities = ["list"]
}

path "instacart/roles/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

# vault delete instacart/cache/<role>: revoke a role's shared tokens.
path "instacart/cache/*" {
  capabilities = ["delete"]
}

# vault write -f instacart/tidy; vault read instacart/tidy (the pass's progress)
path "instacart/tidy" {
  capabilities = ["update", "read"]
}

path "instacart/metrics" {
  capabilities = ["read"]
}

# This mount's leases. List them (Vault wants sudo for that):
#   vault list sys/leases/lookup/instacart/creds/<role>/
path "sys/leases/lookup/instacart/creds/*" {
  capabilities = ["list", "sudo"]
}

# Revoke all of a role's leases:
#   vault lease revoke -prefix instacart/creds/<role>
path "sys/leases/revoke-prefix/instacart/creds/*" {
  capabilities = ["update", "sudo"]
}

# Revoke or renew one lease with its id in the URL:
#   vault lease revoke instacart/creds/<role>/<lease>
#   vault write -f sys/leases/renew/instacart/creds/<role>/<lease>
# (vault lease lookup and vault lease renew send the id in the body, which
# Vault's default policy allows.) A lease_id in the body is denied here,
# since Vault would prefer it to the URL's and reach any lease.
path "sys/leases/revoke/instacart/creds/*" {
  capabilities      = ["update"]
  denied_parameters = { "lease_id" = [] }
}

path "sys/leases/renew/instacart/creds/*" {
  capabilities      = ["update"]
  denied_parameters = { "lease_id" = [] }
}
