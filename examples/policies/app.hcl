# Application policy: read tokens for one role only (here "fulfillment").
# "update" covers roles that take input (user_id=..., code=...).
path "instacart/creds/fulfillment" {
  capabilities = ["read", "update"]
}
