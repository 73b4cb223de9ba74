#!/usr/bin/env bash
# make demo / make dev: a dev Vault with the plugin registered and enabled at
# instacart/, talking to the local Connect fake (or to a real Connect host when
# INSTACART_BASE_URL, INSTACART_CLIENT_ID and INSTACART_CLIENT_SECRET are set).
#
#   scripts/demo.sh demo   walk through every grant, then stop (exit 0)
#   scripts/demo.sh dev    set up, print how to use it, keep running until Ctrl-C
#                          or kill <pid> (either exits 0 once everything is stopped)
#
# dev also writes, into .bin/dev/ (emptied first), what the README's "on make
# dev" recipes use: env (source it in another shell), Vault Agent, Vault Proxy
# and Prometheus configs made from the shipped examples for this Vault (http,
# its port), and the token files they read. DEMO_BIN (default .bin) is where
# vault, connect-fake and plugins/ are found and dev/ is written: the e2e suite
# points it at a build of its own.
#
# No secret is printed: the client secret travels in a 0600 file, and access
# tokens are shown only by length.
set -euo pipefail

mode="${1:-demo}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${DEMO_BIN:-$root/.bin}"
[[ "$bin" == /* ]] || bin="$root/$bin"
plugin="vault-plugin-secrets-instacart"
version="${VERSION:-$("$root/scripts/version.sh")}"
export PATH="$bin:$PATH"

work="$(mktemp -d "${TMPDIR:-/tmp}/instacart-demo.XXXXXX")"
chmod 700 "$work"
pids=()
dev=""
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  # What only this Vault could use goes with it: its root token (env), the
  # tokens Vault issued, and a Connect token Agent rendered (live for up to
  # a day against a real host). The configs stay, to read.
  if [[ -n "$dev" ]]; then
    rm -f "$dev/env" "$dev/app-token" "$dev/prometheus-token" "$dev/instacart-token"
  fi
}
trap cleanup EXIT
# Interrupted while setting up: a failure. Once dev is up and waiting, Ctrl-C
# or kill is how it is meant to stop, so that exit is 0 (see the end).
trap 'exit 130' INT TERM

if [[ -t 1 ]]; then
  step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
  step() { printf '\n==> %s\n' "$*"; }
fi
say() { printf '    %s\n' "$*"; }
fail() { echo "demo: $*" >&2; exit 1; }

# json_field FILE KEY: a top-level or nested string field of Vault's JSON output.
json_field() { grep -o "\"$2\": *\"[^\"]*\"" "$1" | head -1 | sed 's/.*: *"\(.*\)"/\1/'; }

# free_port: a loopback port nothing listens on.
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  fail "no free port"
}

wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# --- Connect: the local fake, or a real host -------------------------------
secret_file="$work/client_secret"
if [[ -n "${INSTACART_BASE_URL:-}" ]]; then
  [[ -n "${INSTACART_CLIENT_ID:-}" && -n "${INSTACART_CLIENT_SECRET:-}" ]] ||
    fail "INSTACART_BASE_URL needs INSTACART_CLIENT_ID and INSTACART_CLIENT_SECRET"
  base_url="$INSTACART_BASE_URL"
  client_id="$INSTACART_CLIENT_ID"
  (umask 077; printf '%s' "$INSTACART_CLIENT_SECRET" >"$secret_file")
  fake=false
  step "Using Connect at $base_url"
else
  step "Starting the Connect fake"
  client_id="demo-client"
  connect-fake -client-id "$client_id" -secret-file "$secret_file" -addr-file "$work/fake.url" \
    >"$work/fake.log" 2>&1 &
  pids+=($!)
  wait_for 10 test -s "$work/fake.url" || fail "the fake did not start: $(cat "$work/fake.log")"
  base_url="$(cat "$work/fake.url")"
  fake=true
  say "listening on $base_url (client id $client_id; its secret is in a 0600 temp file)"
fi

# The README's examples use these names: following it against make dev works.
redirect_uri=https://shop.example.com/instacart/callback

# --- Vault ------------------------------------------------------------------
step "Starting a dev Vault with plugin_directory=.bin/plugins"
port="$(free_port)"
export VAULT_ADDR="http://127.0.0.1:$port"
export VAULT_TOKEN="dev-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
cat >"$work/vault.hcl" <<HCL
plugin_directory = "$bin/plugins"
api_addr         = "$VAULT_ADDR"
HCL
# The root token goes by environment, not argv, where ps would show it.
VAULT_DEV_ROOT_TOKEN_ID="$VAULT_TOKEN" vault server -dev -dev-listen-address="127.0.0.1:$port" \
  -config="$work/vault.hcl" >"$work/vault.log" 2>&1 &
pids+=($!)
wait_for 30 vault status || fail "Vault did not start: $(tail -20 "$work/vault.log")"
say "$(vault version) at $VAULT_ADDR"

step "Registering the plugin by checksum and version, enabling it at instacart/"
# make build VERSION=... writes one file per version, as the README registers it.
sha="$(sha256sum "$bin/plugins/$plugin-$version" | cut -d' ' -f1)"
vault plugin register -sha256="$sha" -version="$version" -command="$plugin-$version" secret "$plugin" | sed 's/^/    /'
vault secrets enable -path=instacart -plugin-version="$version" "$plugin" | sed 's/^/    /'
vault plugin list secret | grep "$plugin" | sed 's/^/    /'

step "Writing instacart/config (verifies the credentials with a test mint)"
vault write instacart/config client_id="$client_id" client_secret=@"$secret_file" base_url="$base_url" | sed 's/^/    /'
vault read instacart/config | sed 's/^/    /'

step "Creating one role per grant"
vault write instacart/roles/fulfillment grant_type=client_credentials scopes=connect:fulfillment | sed 's/^/    /'
vault write instacart/roles/shoppers grant_type=fulfillment_user_assertion \
  scopes=connect:recommendations allowed_user_ids='store-*' | sed 's/^/    /'
vault write instacart/roles/linking grant_type=authorization_code scopes=account_linking \
  redirect_uri="$redirect_uri" | sed 's/^/    /'
vault list instacart/roles | sed 's/^/    /'

# issue OUT CMD...: runs a vault command with -format=json into OUT and
# summarises the token without printing it.
issue() {
  local out="$1"; shift
  "$@" -format=json >"$out"
  local tok; tok="$(json_field "$out" access_token)"
  say "lease_id    $(json_field "$out" lease_id)"
  say "lease ttl   $(grep -o '"lease_duration": *[0-9]*' "$out" | grep -o '[0-9]*$')s (token expires_at $(json_field "$out" expires_at))"
  say "token       <${#tok} characters, not shown>"
}

# check FILE: asks Connect's POST /v2/fulfillment/users whether the token works.
# Against a real host it does nothing: creating users there is not a demo's business.
check() {
  if ! $fake; then say "(token not exercised against a real Connect host)"; return 0; fi
  json_field "$1" access_token | connect-fake check-token -base-url "$base_url" | sed 's/^/    /'
}

step "client_credentials: vault read instacart/creds/fulfillment"
issue "$work/cc.json" vault read instacart/creds/fulfillment
check "$work/cc.json"
lease="$(json_field "$work/cc.json" lease_id)"
say "vault lease lookup:"
vault lease lookup "$lease" | sed 's/^/      /'

step "fulfillment_user_assertion: vault write instacart/creds/shoppers user_id=store-42"
issue "$work/shopper.json" vault write instacart/creds/shoppers user_id=store-42
check "$work/shopper.json"

if $fake; then
  step "authorization_code: exchange a single-use code from Instacart's linking flow"
  code="$(connect-fake authorize -base-url "$base_url" -client-id "$client_id" \
    -redirect-uri "$redirect_uri" -user-id store-42)"
  issue "$work/link.json" vault write instacart/creds/linking code="$code"
  check "$work/link.json"

  step "Revoking the exclusive linking lease: Vault calls Connect's revoke endpoint"
  vault lease revoke -sync "$(json_field "$work/link.json" lease_id)" | sed 's/^/    /'
  if check "$work/link.json"; then fail "the revoked token still works"; fi
  say "(401 is the point: the token is dead upstream)"
else
  say "(authorization_code needs a code from Instacart's linking flow; skipped against a real host)"
fi

# write_dev_files: .bin/dev/ for the README's "on make dev" recipes. Each
# config is the shipped example with only what make dev differs in replaced
# (Vault's address, file paths, listener ports), so the recipes run the
# examples as shipped otherwise.
write_dev_files() {
  dev="$bin/dev"
  rm -rf "$dev"
  mkdir -m 700 -p "$dev"
  proxy_addr="127.0.0.1:$(free_port)"
  prometheus_addr="127.0.0.1:$(free_port)"
  local ex="$root/examples"
  sed -e "s|http://127.0.0.1:8200|$VAULT_ADDR|" \
      -e "s|/etc/vault-agent/app-token|$dev/app-token|" \
      -e "s|/etc/vault-agent/instacart-token.ctmpl|$ex/agent/instacart-token.ctmpl|" \
      -e "s|/run/app/instacart-token|$dev/instacart-token|" \
      "$ex/agent/agent.hcl" >"$dev/agent.hcl"
  sed -e "s|http://127.0.0.1:8200|$VAULT_ADDR|" \
      -e "s|/etc/vault-proxy/app-token|$dev/app-token|" \
      -e "s|127.0.0.1:8100|$proxy_addr|" \
      "$ex/proxy/proxy.hcl" >"$dev/proxy.hcl"
  # make dev's Vault is plain http: no tls_config, scheme http.
  {
    echo "# make dev: examples/prometheus/prometheus.yml for this Vault (http), with the alert rules."
    echo "global: {scrape_interval: 5s, evaluation_interval: 5s}"
    echo "rule_files: [\"$ex/prometheus/alerts.yml\"]"
    sed -e '/^#/d' -e 's|scheme: https|scheme: http|' -e '/tls_config:/d' -e '/ca_file:/d' \
        -e "s|/etc/prometheus/vault-token|$dev/prometheus-token|" \
        -e "s|vault.example.com:8200|${VAULT_ADDR#http://}|" \
        "$ex/prometheus/prometheus.yml"
  } >"$dev/prometheus.yml"
  vault policy write instacart-app "$ex/policies/app.hcl" >/dev/null
  vault policy write instacart-metrics "$ex/policies/metrics.hcl" >/dev/null
  (umask 077
   vault token create -no-default-policy -policy=instacart-app -field=token >"$dev/app-token"
   vault token create -orphan -no-default-policy -policy=instacart-metrics -period=768h \
     -display-name=prometheus -field=token >"$dev/prometheus-token")
  (umask 077; cat >"$dev/env" <<EOT
# make dev's environment: source $dev/env
export PATH="$bin:\$PATH"  # vault and connect-fake, built here
export VAULT_ADDR=$VAULT_ADDR
export VAULT_TOKEN=$VAULT_TOKEN  # the dev root token of this throwaway server
$($fake && echo "export CONNECT_FAKE_URL=$base_url  # the Connect fake")
export PROXY_ADDR=http://$proxy_addr  # the listener of $dev/proxy.hcl
export PROMETHEUS_ADDR=$prometheus_addr  # for prometheus --web.listen-address
EOT
  )
}

if [[ "$mode" == dev ]]; then
  write_dev_files
  step "Vault is running. In another shell, from $root:"
  cat <<EOT
    source ${dev#"$root"/}/env    # PATH, VAULT_ADDR, VAULT_TOKEN, CONNECT_FAKE_URL, PROXY_ADDR, PROMETHEUS_ADDR ($dev/env)

    vault read instacart/config
    vault read instacart/creds/fulfillment
    vault write instacart/creds/shoppers user_id=store-7
    vault path-help instacart/creds/fulfillment
    vault lease revoke -prefix instacart/creds/fulfillment   # a role's leases, as the operator policy allows
EOT
  if $fake; then
    cat <<EOT

    # an authorization code, as Instacart's linking flow would hand one over (single-use):
    vault write instacart/creds/linking code="\$(connect-fake authorize -base-url "\$CONNECT_FAKE_URL" \\
        -client-id $client_id -redirect-uri $redirect_uri -user-id store-42)"

  Roles: fulfillment, shoppers, linking (as in the README).
  Connect fake: $base_url, client id $client_id
  The fake's client secret: $secret_file (0600; never printed)
EOT
  else
    cat <<EOT

  Roles: fulfillment, shoppers, linking (as in the README).
  Connect: $base_url; the client secret, copied from INSTACART_CLIENT_SECRET: $secret_file (0600)
EOT
  fi
  cat <<EOT
  The README's "on make dev" recipes: ${dev#"$root"/}/ holds env, agent.hcl, proxy.hcl
  (listening on $proxy_addr), prometheus.yml, and app-token / prometheus-token (0600)
  with the instacart-app and instacart-metrics policies.
  Vault log: $work/vault.log
  To stop: press Ctrl-C here (or kill $$). Vault and the fake stop, and $work,
  with the secret file and logs in it, is removed; so are ${dev#"$root"/}/'s env and token files.
EOT
  # Stopping is what dev waits for: a signal now is a clean exit (0), after
  # cleanup, and so is Vault or the fake ending on its own.
  trap 'exit 0' INT TERM
  wait "${pids[@]}" || true
  exit 0
fi

step "Shutting down"
say "demo complete"
