#!/usr/bin/env bash
# tools/demo.sh BUILD_DIR [SECONDS]: tokenwarden renewing and checking tokens against the local
# provider simulator, on loopback, for about SECONDS seconds (default 20).
#
# It starts tokenwarden-sim, creates a key, a config and a database in a temporary folder, seeds
# tokens for all three providers through the simulator's admin API (two due now, one TikTok token
# two days from expiry, one revoked by its customer, one behind a 503 that recovers), adds them
# with `tokenwarden add`, runs `tokenwarden run`, and then shows what happened. Everything it
# starts, it stops; the folder is removed unless KEEP=1.
set -euo pipefail

build=${1:?usage: tools/demo.sh BUILD_DIR [SECONDS]}
seconds=${2:-20}
tw="$build/tokenwarden"
sim="$build/tokenwarden-sim"
dir=$(mktemp -d /tmp/tokenwarden-demo-XXXXXX)
sim_pid=""
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost  # loopback, never a proxy

cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

say "starting the provider simulator on loopback"
"$sim" --port 0 --port-file "$dir/sim.port" >"$dir/sim.out" 2>"$dir/sim.log" &
sim_pid=$!
for _ in $(seq 100); do [ -s "$dir/sim.port" ] && break; sleep 0.1; done
[ -s "$dir/sim.port" ] || { echo "the simulator did not start:"; cat "$dir/sim.log"; exit 1; }
base="http://127.0.0.1:$(cat "$dir/sim.port")"
echo "simulator at $base"

admin() {  # admin PATH JSON
  curl -sS --fail-with-body -X POST -H 'Content-Type: application/json' -d "$2" "$base/admin/$1"
}
field() {  # field NAME < JSON: one string field of a flat JSON object
  sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"
}

say "creating a key and a config in $dir"
"$tw" keygen --out "$dir/tokenwarden.key"
cat >"$dir/tokenwarden.yaml" <<EOF
database: {path: $dir/tokens.db}
key: {file: $dir/tokenwarden.key}
providers:
  meta:
    graph_base_url: $base
    app_id: sim-meta-app
    app_secret: {env: TW_DEMO_META_SECRET}
    check_every: 15s
  google:
    oauth_base_url: $base
    business_base_url: $base
    client_id: sim-google-client
    client_secret: {env: TW_DEMO_GOOGLE_SECRET}
    check_every: 15s
  tiktok:
    open_api_base_url: $base
    business_api_base_url: $base
    client_key: sim-tiktok-key
    client_secret: {env: TW_DEMO_TIKTOK_SECRET}
    check_every: 15s
retry: {initial_backoff: 3s, max_backoff: 1m}
scheduler: {idle_poll: 5s, shutdown_grace: 5s}
http: {total_timeout: 10s}
log: {summary_every: 10s}
EOF
export TW_DEMO_META_SECRET=sim-meta-secret TW_DEMO_GOOGLE_SECRET=sim-google-secret
export TW_DEMO_TIKTOK_SECRET=sim-tiktok-secret

# add PROVIDER KIND ACCOUNT SEED_JSON [tokenwarden add options...]: seeds a grant in the
# simulator and hands its tokens to tokenwarden on stdin (never on the command line).
add() {
  local provider=$1 kind=$2 account=$3 seed=$4
  shift 4
  local reply access refresh
  reply=$(admin seed "$seed")
  access=$(field access_token <<<"$reply")
  refresh=$(field refresh_token <<<"$reply")
  printf '%s\n%s\n' "$access" "$refresh" |
    "$tw" --config "$dir/tokenwarden.yaml" add --provider "$provider" --kind "$kind" \
      --workspace "ws-demo" --account "$account" "$@"
}

say "seeding tokens in the simulator and adding them to tokenwarden"
add meta page_token 104233 '{"provider":"meta","kind":"page","account_id":"104233","user_id":"88213"}'
add meta user_token 88213-user '{"provider":"meta","kind":"user","account_id":"88213-user","expires_in":172800}' \
  --expires-at +2d
add google refresh_token accounts/5512 '{"provider":"google","account_id":"accounts/5512"}'
add google refresh_token accounts/9001 '{"provider":"google","account_id":"accounts/9001"}'
add tiktok business_token biz-7001 \
  '{"provider":"tiktok","api":"business","account_id":"biz-7001","expires_in":172800}' --expires-at +2d
add tiktok refresh_token open-3f2a '{"provider":"tiktok","api":"v2","account_id":"open-3f2a"}' \
  --expires-at +24h --refresh-expires-at +365d

say "the customer behind accounts/9001 revokes access; Google's token endpoint will answer 503 once"
admin revoke '{"provider":"google","account_id":"accounts/9001"}' >/dev/null
admin fault '{"provider":"google","endpoint":"google.token","account_id":"accounts/5512","kind":"status","status":503,"count":1}' >/dev/null
"$tw" --config "$dir/tokenwarden.yaml" list

say "running tokenwarden for $seconds seconds (its log follows)"
timeout -s TERM "$seconds" "$tw" --config "$dir/tokenwarden.yaml" run || true

say "what happened"
"$tw" --config "$dir/tokenwarden.yaml" list
echo
echo "simulator counters: $(curl -sS "$base/admin/counters" | sed -n 's/.*"totals":\({[^}]*}\).*/\1/p')"
