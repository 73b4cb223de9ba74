# Application policy: read tokens for one role only (here "fulfillment"), and
# renew and revoke the leases of that role's tokens, and no other leases.
# Assumes the engine is mounted at instacart/.
#
# Create the app's token with -no-default-policy:
#   vault token create -no-default-policy -policy=instacart-app -field=token
# Without it the token also gets Vault's default policy, which lets it look up
# and renew any lease whose id it knows (sys/leases/lookup, sys/leases/renew
# with the id in the body), not only this role's.

# "update" covers roles that take input (user_id=..., code=...).
path "instacart/creds/fulfillment" {
  capabilities = ["read", "update"]
}

# PUT sys/leases/renew/<lease_id> and sys/leases/revoke/<lease_id>, with the
# lease id in the URL, as tokensource, examples/app-node and
# `vault lease revoke` send them. Vault prefers a lease_id in the request body
# to the one in the URL, so the body parameter is denied: without that, these
# paths would reach any lease.
path "sys/leases/renew/instacart/creds/fulfillment/*" {
  capabilities      = ["update"]
  denied_parameters = { "lease_id" = [] }
}

path "sys/leases/revoke/instacart/creds/fulfillment/*" {
  capabilities      = ["update"]
  denied_parameters = { "lease_id" = [] }
}

# Vault Agent and Vault Proxy look their token_file token up when they start
# (auto-auth); a token without the default policy needs this to be used there.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
