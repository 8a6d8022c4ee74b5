#!/usr/bin/env bash
# tools/demo.sh BUILD_DIR [SECONDS]: tokenwarden renewing and checking tokens against the local
# provider simulator, on loopback, for about SECONDS seconds (default 20, at least 12).
#
# It starts tokenwarden-sim, creates a key, a config and a database in a temporary folder, seeds
# tokens for all three providers through the simulator's admin API (two due now, one TikTok token
# two days from expiry, one revoked by its customer, one behind a 503 that recovers), adds them
# with `tokenwarden add`, runs `tokenwarden run`, and then shows what happened: the token list,
# `tokenwarden status`, the notice the operator's hook received, and the simulator's counters.
#
# Then it checks what it showed, and exits 1 if a check fails (the test suite runs it so):
#   - every token the simulator issued (seeded or renewed) and every client secret is searched
#     for in every line the daemon and the CLI printed, in the status file, the notice and the
#     hook's environment, and in the database with its WAL: 0 hits;
#   - the revoked grant is `revoked` and the hook was told once; `tokenwarden status` exits 1;
#   - the simulator saw no concurrent refresh, no reused refresh token, and one invalid_grant
#     (the revoked grant's).
# Everything it starts, it stops; the folder is removed unless KEEP=1.
set -euo pipefail

build=${1:?usage: tools/demo.sh BUILD_DIR [SECONDS]}
seconds=${2:-20}
[ "$seconds" -ge 12 ] || { echo "tools/demo.sh: SECONDS must be at least 12" >&2; exit 2; }
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
# --record-issued: the simulator remembers every token it hands out, for the scan at the end.
"$sim" --port 0 --port-file "$dir/sim.port" --record-issued >"$dir/sim.out" 2>"$dir/sim.log" &
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
# tokenwarden's CLI; everything it prints is also kept in cli.out, for the scan.
twc() {
  "$tw" --config "$dir/tokenwarden.yaml" "$@" 2>&1 | tee -a "$dir/cli.out"
  return "${PIPESTATUS[0]}"
}

say "creating a key, a config and the operator's re-authorisation hook in $dir"
"$tw" keygen --out "$dir/tokenwarden.key"
cat >"$dir/tokenwarden.yaml" <<EOF
database: {path: $dir/tokens.db}
key: {file: $dir/tokenwarden.key}
providers:
  meta:
    graph_base_url: $base
    app_id: sim-meta-app
    app_secret: {env: TW_DEMO_META_SECRET}
    check_every: 10s
  google:
    oauth_base_url: $base
    business_base_url: $base
    client_id: sim-google-client
    client_secret: {env: TW_DEMO_GOOGLE_SECRET}
    check_every: 10s
  tiktok:
    open_api_base_url: $base
    business_api_base_url: $base
    client_key: sim-tiktok-key
    client_secret: {env: TW_DEMO_TIKTOK_SECRET}
    check_every: 10s
retry: {initial_backoff: 3s, max_backoff: 1m}
scheduler: {idle_poll: 5s, shutdown_grace: 5s}
http: {total_timeout: 10s}
log: {summary_every: 10s}
status: {file: $dir/status.json, write_every: 5s, min_interval: 1s}
notify: {command: $dir/on-reauth.sh}
EOF
# The hook gets the token's id, provider, workspace, state and reason in its environment.
cat >"$dir/on-reauth.sh" <<EOF
#!/bin/sh
echo "\$TW_TOKEN_ID (\$TW_PROVIDER, workspace \$TW_WORKSPACE) is \$TW_STATE: \$TW_REASON" >>"$dir/notices"
env >"$dir/hook.env"
EOF
chmod 0700 "$dir/on-reauth.sh"
echo "wrote $dir/tokenwarden.yaml and $dir/on-reauth.sh"
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
    twc add --provider "$provider" --kind "$kind" --workspace "ws-demo" --account "$account" "$@"
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
twc list

say "running tokenwarden for $seconds seconds (its log follows)"
timeout -s TERM "$seconds" "$tw" --config "$dir/tokenwarden.yaml" run 2>&1 |
  tee "$dir/daemon.log" || true

say "what happened"
twc list
echo
status_rc=0
twc status || status_rc=$?
echo "(tokenwarden status exited $status_rc: 0 healthy, 1 needs attention, 2 error)"
echo
echo "the operator's hook was told:"
sed 's/^/  /' "$dir/notices" 2>/dev/null || echo "  nothing"
counters=$(curl -sS "$base/admin/counters" | sed -n 's/.*"totals":\({[^}]*}\).*/\1/p')
echo
echo "simulator counters: $counters"

say "checking what the demo showed"
failures=0
check() {  # check DESCRIPTION COMMAND...: runs COMMAND, reports, counts a failure
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; failures=$((failures + 1)); fi
}
# Every token the simulator issued, one per line (none contains a quote or a comma), and the
# client secrets: the plaintexts that must appear nowhere.
curl -sS --fail "$base/admin/issued" | tr ',' '\n' | sed -n 's/.*"\([^"]*\)".*/\1/p' |
  grep -v '^tokens$' >"$dir/secrets"
issued=$(wc -l <"$dir/secrets")
printf '%s\n' sim-meta-secret sim-google-secret sim-tiktok-secret >>"$dir/secrets"
scanned=(daemon.log cli.out status.json notices hook.env tokens.db tokens.db-wal tokens.db-shm)
lines=$(cat "$dir/daemon.log" "$dir/cli.out" | wc -l)
no_secret_anywhere() {
  local f hits=0
  for f in "${scanned[@]}"; do
    [ -e "$dir/$f" ] || continue
    if grep -a -F -q -f "$dir/secrets" "$dir/$f"; then
      echo "  a secret is in $f" >&2
      hits=$((hits + 1))
    fi
  done
  [ "$hits" -eq 0 ]
}
check "the simulator listed every token it issued ($issued)" test "$issued" -ge 10
check "no secret ($issued tokens, 3 client secrets) in $lines log and CLI lines, the status file, \
the notice, the hook's environment or the database" no_secret_anywhere
check "the revoked grant (accounts/9001) is revoked" \
  grep -q 'accounts/9001 *revoked' <(twc list 2>&1)
check "the hook was told once, of accounts/9001's token" \
  test "$(grep -c 'is revoked' "$dir/notices" 2>/dev/null)" = 1
check "tokenwarden status exits 1 (a token needs re-authorisation)" test "$status_rc" = 1
check "no concurrent refresh, no reused refresh token; invalid_grant only for the revoked grant" \
  grep -q '"concurrent_refreshes":0,"invalid_grant":1,.*"reused_refresh_tokens":0' <<<"$counters"
if [ "$failures" -gt 0 ]; then
  echo "demo: $failures check(s) failed"
  KEEP=1
  exit 1
fi
echo "demo: every check passed"
