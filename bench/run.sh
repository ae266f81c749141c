#!/usr/bin/env bash
# `make bench`: builds the services (profile bench-release = release without LTO), starts each
# one as its own process on PostgreSQL (a fresh database per service) + Redis (a fresh key
# prefix) with the WeChat sandbox, loads every user-facing path through the gateway with
# bench/loadgen, measures the floors of their storage and WeChat steps alone (pgbench,
# redis-benchmark, the sandbox's jscode2session) at the same concurrency and duration, runs the
# scale curve of /me and /userinfo/ (plotted to bench/scale.svg), and writes the tables into
# bench/results.md. Everything it starts it stops.
#
# Needs: psql, pgbench (postgresql-client), redis-benchmark and redis-cli (redis-tools), curl.
#
# Knobs (environment):
#   BENCH_CONNECTIONS (32,128) open connections per path: every path and floor at each
#   BENCH_SCALE (8,16,32,128,512) the scale curve's connections (/me, /userinfo/); empty: none
#   BENCH_FLOORS (1)         0 skips the floors
#   BENCH_DURATION_SECS (10) seconds per path, per floor and per point of the curve
#   BENCH_PATHS              subset of healthz,me,userinfo,pay,notify,notify-dup,login
#   BENCH_USERS (200)        users logged in during setup
#   BENCH_LOGIN_CODES        login codes made before the /login/ window (3000 per second)
#   BENCH_LOADGEN_THREADS (1) generator threads (it shares the machine with the services)
#   BENCH_PROFILE (bench-release)  cargo profile; `release` for the LTO build, `dev` to check the wiring quickly
#   BENCH_RUST_LOG (info), BENCH_LOG_FORMAT (json)  what the services log, as in production
#   BENCH_PG_HOST (127.0.0.1), BENCH_PG_PORT (5432), BENCH_PG_USER (postgres)
#   BENCH_REDIS_URL (redis://127.0.0.1:6379)
#   BENCH_PORT_BASE (18000)  gateway +80, auth +51, user +52, pay +53, sandbox +90
#   BENCH_OUT (bench/results.md), BENCH_JSON (target/bench/last-run.json), BENCH_PLOT (bench/scale.svg)
#   BENCH_HOPS (40)          requests per path of the per-hop breakdown (traced, one at a time); 0: none
#   BENCH_SESSION_CACHE_TTL_MS (5000)  the session caches of the gateway and user-service
#                            (GATEWAY_/USER_SESSION_CACHE_TTL_MS; 0: both off)
#   BENCH_USER_SESSION_CACHE_TTL_MS  user-service's alone (default: BENCH_SESSION_CACHE_TTL_MS)
#   BENCH_USER_CACHE_TTL_MS  the gateway's cache of user rows for /me (GATEWAY_USER_CACHE_TTL_MS;
#                            default: BENCH_SESSION_CACHE_TTL_MS; 0: off)
#   BENCH_CATCHUP_ORDERS (1000)  the catch-up stage: orders paid with their notifies lost, then
#                            pay-service restarted and timed until its reconciler repaired them all; 0: none
#   BENCH_RECONCILE_CONCURRENCY (8)  PAY_RECONCILE_CONCURRENCY of the catch-up stage
#   BENCH_SERVICES_BIN       run the services from this folder instead of the fresh build
#                            (A/B runs against an older build; the load generator is this tree's)
#   BENCH_RELAY (1)          0 skips the NATS JetStream relay window (needs nats-server)
#   BENCH_RELAY_EVENTS (20000), BENCH_RELAY_WRITERS (8)  its events per window and writers
#   BENCH_RELAY_ONLY (0)     1 runs only the relay window (no stack, no paths)
set -euo pipefail
cd "$(dirname "$0")/.."
started_at=$(date +%s)

profile=${BENCH_PROFILE:-bench-release}
pg_host=${BENCH_PG_HOST:-127.0.0.1}
pg_port=${BENCH_PG_PORT:-5432}
pg_user=${BENCH_PG_USER:-postgres}
redis_url=${BENCH_REDIS_URL:-redis://127.0.0.1:6379}
base=${BENCH_PORT_BASE:-18000}
gw_port=$((base + 80)) auth_port=$((base + 51)) user_port=$((base + 52))
pay_port=$((base + 53)) sandbox_port=$((base + 90))
out=${BENCH_OUT:-bench/results.md}
json=${BENCH_JSON:-target/bench/last-run.json}
logs=target/bench/logs
mkdir -p "$logs" "$(dirname "$json")"

say() { printf 'bench: %s\n' "$*" >&2; }

for tool in psql curl; do
  command -v "$tool" >/dev/null || { say "needs $tool (apt-get install -y postgresql-client curl)"; exit 1; }
done
if [ "${BENCH_FLOORS:-1}" = 1 ]; then
  for tool in pgbench redis-benchmark; do
    command -v "$tool" >/dev/null || { say "needs $tool for the floors (apt-get install -y postgresql-client redis-tools), or BENCH_FLOORS=0"; exit 1; }
  done
fi
psql_admin() { psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
psql_admin -c 'SELECT 1' >/dev/null || { say "PostgreSQL is not reachable at $pg_host:$pg_port as $pg_user"; exit 1; }
for port in $gw_port $auth_port $user_port $pay_port $sandbox_port; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "port $port is taken; set BENCH_PORT_BASE"; exit 1
  fi
done

say "building (cargo profile $profile) ..."
build_started=$(date +%s)
packages=(-p wxmp-loadgen)
# With BENCH_SERVICES_BIN the services are already built (an older build to compare with).
if [ -z "${BENCH_SERVICES_BIN:-}" ] && [ "${BENCH_RELAY_ONLY:-0}" != 1 ]; then
  packages+=(-p sandbox -p auth-service -p user-service -p pay-service -p gateway)
fi
${CARGO:-cargo} build --profile "$profile" --locked "${packages[@]}" --bins
build_secs=$(( $(date +%s) - build_started ))
say "build took ${build_secs}s"
bin=target/$profile
# cargo's `dev` profile builds into target/debug (a quick check of the wiring, not numbers).
if [ "$profile" = dev ]; then bin=target/debug; fi
services_bin=${BENCH_SERVICES_BIN:-$bin}

run_id="$(date +%Y%m%d%H%M%S)_$$"
user_db="wxmp_bench_user_$run_id"
pay_db="wxmp_bench_pay_$run_id"
relay_db="wxmp_bench_relay_$run_id"
nats_store=$(mktemp -d)
redis_prefix="wxmp-bench:$run_id:"
pids=()

cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "${BENCH_KEEP_DATA:-0}" != 1 ]; then
    psql_admin -c "DROP DATABASE IF EXISTS \"$user_db\"" -c "DROP DATABASE IF EXISTS \"$pay_db\"" >/dev/null 2>&1 || true
    psql_admin -c "DROP DATABASE IF EXISTS \"$relay_db\"" >/dev/null 2>&1 || true
    if command -v redis-cli >/dev/null; then
      redis-cli -u "$redis_url" --scan --pattern "${redis_prefix}*" 2>/dev/null \
        | xargs -r -n 500 redis-cli -u "$redis_url" DEL >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$nats_store"
  say "done in $(( $(date +%s) - started_at ))s (build ${build_secs:-?}s); logs in $logs"
  exit "$status"
}
trap cleanup EXIT INT TERM

# The order-event relay into NATS JetStream beside the outbox's write rate
# (bench/loadgen/src/relay_bench.rs): its own nats-server -js and database; the section is
# appended to $out.
relay_window() {
  [ "${BENCH_RELAY:-1}" = 1 ] || return 0
  local nats_bin
  nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  [ -x "$nats_bin" ] || { say "no nats-server: the relay window is skipped (apt-get install nats-server)"; return 0; }
  local nats_port=$((base + 22))
  "$nats_bin" -js -a 127.0.0.1 -p "$nats_port" -sd "$nats_store" >"$logs/nats.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
  psql_admin -c "CREATE DATABASE \"$relay_db\""
  say "relay window: ${BENCH_RELAY_EVENTS:-20000} events x 3 ..."
  "$bin/wxmp-relay-bench" --database-url "postgres://$pg_user@$pg_host:$pg_port/$relay_db" \
    --nats-url "nats://127.0.0.1:$nats_port" --events "${BENCH_RELAY_EVENTS:-20000}" \
    --writers "${BENCH_RELAY_WRITERS:-8}" --out target/bench/relay.md >/dev/null
  if [ "${BENCH_RELAY_ONLY:-0}" != 1 ]; then cat target/bench/relay.md >>"$out"; fi
}
if [ "${BENCH_RELAY_ONLY:-0}" = 1 ]; then
  relay_window
  cat target/bench/relay.md
  exit 0
fi

psql_admin -c "CREATE DATABASE \"$user_db\"" -c "CREATE DATABASE \"$pay_db\""
pg_base="postgres://$pg_user@$pg_host:$pg_port"

export RUST_LOG=${BENCH_RUST_LOG:-info}
export WXMP_LOG_FORMAT=${BENCH_LOG_FORMAT:-json}
# The sandbox's dev app and merchant, and no quotas: the bench makes thousands of codes.
export WXMP_APPS=wx00000000000dev01:devsecret000000000000000000000ff
export WXMP_PAY_MCH_ID=1900000109
export WXMP_PAY_KEY=devpaykey00000000000000000000key
export WXMP_WECHAT_API_BASE=http://127.0.0.1:$sandbox_port
export WXMP_WECHAT_PAY_BASE=http://127.0.0.1:$sandbox_port

start() { # name binary VAR=value...
  local name=$1 binary=$2; shift 2
  env "$@" "$services_bin/$binary" >"$logs/$name.log" 2>&1 &
  pids+=("$!")
  eval "${name}_pid=$!"
}

start sandbox wxmp-sandbox SANDBOX_LISTEN_ADDR=127.0.0.1:$sandbox_port \
  SANDBOX_CODE_RATE_PER_MIN=0 SANDBOX_APP_RATE_PER_MIN=0
start user wxmp-user USER_LISTEN_ADDR=127.0.0.1:$user_port \
  USER_DATABASE_URL="$pg_base/$user_db" USER_AUTH_SERVICE_URL=http://127.0.0.1:$auth_port \
  USER_REDIS_URL="$redis_url" USER_SESSION_REVOCATION_CHANNEL="${redis_prefix}session-revoked" \
  USER_CHANGE_CHANNEL="${redis_prefix}user-changed" USER_KEY_ROTATION_CHANNEL="${redis_prefix}key-rotated" \
  USER_SESSION_CACHE_TTL_MS="${BENCH_USER_SESSION_CACHE_TTL_MS:-${BENCH_SESSION_CACHE_TTL_MS:-5000}}"
start auth wxmp-auth AUTH_LISTEN_ADDR=127.0.0.1:$auth_port \
  AUTH_REDIS_URL="$redis_url" AUTH_REDIS_PREFIX="$redis_prefix" AUTH_SESSION_TTL_SECS=3600 \
  AUTH_USER_SERVICE_URL=http://127.0.0.1:$user_port
# The reconciler would query WeChat about the bench's unpaid orders: keep it out of the window.
# Every /pay/ of the load is a purchase of its own, not a double tap: no product reuse.
start pay wxmp-pay PAY_LISTEN_ADDR=127.0.0.1:$pay_port \
  PAY_DATABASE_URL="$pg_base/$pay_db" PAY_NOTIFY_URL=http://127.0.0.1:$gw_port/pay/notify \
  "PAY_PRODUCTS=coffee:1800:Coffee;tea:1200:Tea;catchup:100:Catch-up" \
  PAY_RECONCILE_AFTER_SECS=3600 PAY_RECONCILE_INTERVAL_SECS=600 \
  PAY_PRODUCT_REUSE_SECS=0
# All load comes from one address: the per-client limits would measure only the limiter.
start gateway wxmp-gateway GATEWAY_LISTEN_ADDR=127.0.0.1:$gw_port \
  GATEWAY_AUTH_URL=http://127.0.0.1:$auth_port GATEWAY_USER_URL=http://127.0.0.1:$user_port \
  GATEWAY_PAY_URL=http://127.0.0.1:$pay_port \
  GATEWAY_LOGIN_RATE_PER_MIN=0 GATEWAY_NOTIFY_FAIL_LIMIT=0 \
  GATEWAY_REDIS_URL="$redis_url" GATEWAY_REDIS_PREFIX="$redis_prefix" \
  GATEWAY_SESSION_CACHE_TTL_MS="${BENCH_SESSION_CACHE_TTL_MS:-5000}" \
  GATEWAY_USER_CACHE_TTL_MS="${BENCH_USER_CACHE_TTL_MS:-${BENCH_SESSION_CACHE_TTL_MS:-5000}}"

say "waiting for /readyz ..."
ready=0
for _ in $(seq 300); do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { say "a service exited at start; see $logs"; tail -n 5 "$logs"/*.log >&2; exit 1; }
  done
  if curl -fsS "http://127.0.0.1:$gw_port/readyz" >/dev/null 2>&1 \
     && curl -fsS "http://127.0.0.1:$sandbox_port/healthz" >/dev/null 2>&1; then
    ready=1; break
  fi
  sleep 0.1
done
[ "$ready" = 1 ] || { say "the stack did not get ready in 30 s; see $logs"; exit 1; }
sleep 1 # let start-up allocations settle before reading idle RSS

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit+dirty"; fi
if [ -n "${BENCH_SERVICES_BIN:-}" ]; then commit="services from $BENCH_SERVICES_BIN, load generator $commit"; fi
say "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

floor_args=()
if [ "${BENCH_FLOORS:-1}" = 1 ]; then
  floor_args=(--user-db "$user_db" --pay-db "$pay_db" --pg-host "$pg_host" --pg-port "$pg_port"
    --pg-user "$pg_user" --redis-url "$redis_url" --redis-prefix "${redis_prefix}floor:")
fi

"$bin/wxmp-loadgen" \
  --gateway "http://127.0.0.1:$gw_port" --sandbox "http://127.0.0.1:$sandbox_port" \
  --procs "gateway=$gateway_pid,auth=$auth_pid,user=$user_pid,pay=$pay_pid,sandbox=$sandbox_pid" \
  --commit "$commit" --profile "$profile" --out "$out" --json "$json" \
  --connections "${BENCH_CONNECTIONS:-32,128}" --scale "${BENCH_SCALE-8,16,32,128,512}" \
  --logs "$logs" --hops "${BENCH_HOPS:-40}" --catch-up "${BENCH_CATCHUP_ORDERS:-1000}" \
  --plot "${BENCH_PLOT:-bench/scale.svg}" "${floor_args[@]}" \
  --storage "PostgreSQL $(psql_admin -c 'SHOW server_version' | cut -d' ' -f1) (a fresh database per service) + Redis (a fresh key prefix); services log RUST_LOG=$RUST_LOG as $WXMP_LOG_FORMAT to files"

# The catch-up stage: the loadgen left BENCH_CATCHUP_ORDERS orders paid at the sandbox whose
# notifies were lost. pay-service is restarted with its reconciler due at once (every second,
# PAYING orders asked about right away) and timed until every one of them is PAID. The bench's
# other PAYING orders (the /pay/ window's, never paid) are parked first, so the pass measures
# the backlog alone.
catchup=${BENCH_CATCHUP_ORDERS:-1000}
if [ "$catchup" -gt 0 ]; then
  psql_pay() { psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$pay_db" -v ON_ERROR_STOP=1 -qtA "$@"; }
  backlog=$(psql_pay -c "SELECT count(*) FROM orders WHERE product_id = 'catchup' AND state = 'PAYING'")
  psql_pay -c "UPDATE orders SET next_query_at = 4102444800 WHERE state = 'PAYING' AND product_id <> 'catchup'" >/dev/null
  kill -TERM "$pay_pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pay_pid" 2>/dev/null || break; sleep 0.1; done
  concurrency=${BENCH_RECONCILE_CONCURRENCY:-8}
  say "catch-up: $backlog orders with lost notifies; pay-service restarted, reconciler every 1 s, concurrency $concurrency ..."
  restarted=$(date +%s.%N)
  start pay wxmp-pay PAY_LISTEN_ADDR=127.0.0.1:$pay_port \
    PAY_DATABASE_URL="$pg_base/$pay_db" PAY_NOTIFY_URL=http://127.0.0.1:$gw_port/pay/notify \
    "PAY_PRODUCTS=coffee:1800:Coffee;tea:1200:Tea;catchup:100:Catch-up" \
    PAY_RECONCILE_AFTER_SECS=0 PAY_RECONCILE_INTERVAL_SECS=1 \
    PAY_RECONCILE_CONCURRENCY="$concurrency" PAY_PRODUCT_REUSE_SECS=0
  first="" repaired=0
  for _ in $(seq 3000); do
    repaired=$(psql_pay -c "SELECT count(*) FROM orders WHERE product_id = 'catchup' AND state = 'PAID'" 2>/dev/null || echo 0)
    if [ -z "$first" ] && [ "$repaired" -gt 0 ]; then first=$(date +%s.%N); fi
    [ "$repaired" -ge "$backlog" ] && break
    sleep 0.1
  done
  done_at=$(date +%s.%N)
  line=$(awk -v n="$repaired" -v of="$backlog" -v r="$restarted" -v f="${first:-$done_at}" -v d="$done_at" -v c="$concurrency" 'BEGIN {
    total = d - r; drain = d - f; if (drain < 0.001) drain = 0.001;
    printf "**Catch-up after an outage** (`BENCH_CATCHUP_ORDERS`): %d of %d orders with lost notifies repaired %.1f s after pay-service restarted (start-up included), %.0f orders/s once the first was repaired (`PAY_RECONCILE_CONCURRENCY=%d`, pages of 100 until the backlog is empty).", n, of, total, n / drain, c }')
  say "$line"
  if grep -q '<!-- bench:end -->' "$out"; then
    awk -v line="$line" '/<!-- bench:end -->/ { print line; print "" } { print }' "$out" >"$out.tmp" && mv "$out.tmp" "$out"
  fi
fi
relay_window
