#!/usr/bin/env bash
# `make bench-data`: how pay-service's periodic and stream queries grow with the data.
#
# For each size (orders), a fresh PostgreSQL database gets pay-service's migrations (the
# up.sql files, in order, with psql: no build needed) and is filled by SQL alone: orders over
# the last 30 days and an hour (PAID 90 %, CLOSED 5 %, unpaid 3 %: PAYING while younger than
# their 30-minute expiry, else CLOSED, REFUNDED 2 %), a notify and a paid
# message per paid order, a refund per refunded one, an event per change (ORDER_PAID,
# ORDER_CLOSED, REFUND_SUCCEEDED) and a delivered webhook per event. Then every periodic or
# stream query is run with EXPLAIN ANALYZE, three times (the fastest counts), with issue 29's
# indexes (migration 2026-12-06-005000_growth_indexes) and, inside a rolled-back transaction,
# without them; the plan's scan kind is recorded. The table goes into bench/results.md between
# the bench-data markers.
#
# Knobs: BENCH_DATA_SIZES (1000,100000,1000000), BENCH_PG_HOST/PORT/USER as bench/run.sh,
# BENCH_OUT (bench/results.md), BENCH_KEEP_DATA (0).
set -euo pipefail
cd "$(dirname "$0")/.."

pg_host=${BENCH_PG_HOST:-127.0.0.1}
pg_port=${BENCH_PG_PORT:-5432}
pg_user=${BENCH_PG_USER:-postgres}
sizes=${BENCH_DATA_SIZES:-1000,100000,1000000}
out=${BENCH_OUT:-bench/results.md}
say() { printf 'bench-data: %s\n' "$*" >&2; }
command -v psql >/dev/null || { say "needs psql (apt-get install -y postgresql-client)"; exit 1; }
admin() { psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
admin -c 'SELECT 1' >/dev/null || { say "PostgreSQL is not reachable at $pg_host:$pg_port"; exit 1; }

run_id="$(date +%Y%m%d%H%M%S)_$$"
dbs=()
cleanup() {
  if [ "${BENCH_KEEP_DATA:-0}" != 1 ]; then
    for db in "${dbs[@]}"; do admin -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done
  fi
}
trap cleanup EXIT INT TERM

now=$(date +%s)
day=86400
# What the services use: subscribe.rs REPAIR_WINDOW_SECS, PAY_EVENT_RETENTION_DAYS (30),
# PAY_NOTIFY_RETENTION_DAYS (90), the reconciler's BATCH and the stream's BATCH.
repair_since=$((now - day))
event_before=$((now - 30 * day))
notify_before=$((now - 90 * day))
# The data spans the event retention and one hour more: the hourly events prune finds an
# hour of events (and their deliveries) to delete, as it does in a steady state.
span=$((30 * day + 3600))

# name | SQL (run as EXPLAIN ANALYZE; statements that write run in a rolled-back transaction)
queries=(
  "subscribe repair scan|SELECT order_no FROM orders WHERE state IN ('PAID','REFUNDING','REFUNDED') AND paid_at >= $repair_since AND openid <> '' ORDER BY paid_at DESC LIMIT 500"
  "events prune: webhook_deliveries|DELETE FROM webhook_deliveries WHERE event_id IN (SELECT id FROM order_events WHERE created_at < $event_before)"
  "events prune: order_events|DELETE FROM order_events WHERE created_at < $event_before"
  "WatchOrderEvents kinds=[REFUND_ABNORMAL] (none stored)|SELECT id FROM order_events WHERE id > 0 AND kind IN ('REFUND_ABNORMAL') ORDER BY id LIMIT 100"
  "WatchOrderEvents kinds=[REFUND_SUCCEEDED] (2 %)|SELECT id FROM order_events WHERE id > 0 AND kind IN ('REFUND_SUCCEEDED') ORDER BY id LIMIT 100"
  "WatchOrderEvents all kinds, from the start|SELECT id FROM order_events WHERE id > 0 ORDER BY id LIMIT 100"
  "reconciler: expired open|SELECT order_no FROM orders WHERE state IN ('CREATED','PAYING') AND expires_at <= $now AND reconcile_lease_until <= $now ORDER BY expires_at LIMIT 100"
  "reconciler: PAYING due|SELECT order_no FROM orders WHERE state = 'PAYING' AND prepared_at <= $((now - 60)) AND expires_at > $now AND next_query_at <= $now AND reconcile_lease_until <= $now ORDER BY prepared_at LIMIT 100"
  "reconciler: notify prune|DELETE FROM pay_notifications WHERE received_at < $notify_before"
  "paid messages: claim|SELECT order_no FROM paid_messages WHERE state = 'PENDING' AND next_attempt_at <= $now ORDER BY next_attempt_at LIMIT 20"
  "GET /orders/{no}|SELECT * FROM orders WHERE order_no = 'bench-order-500'"
)
new_indexes="orders_paid_at_idx webhook_deliveries_event_id_idx order_events_kind_id_idx"

fill_sql() { # orders
  cat <<SQL
INSERT INTO orders (order_no, user_id, app_id, openid, amount_fen, description, product_id, state,
  prepay_id, prepared_at, transaction_id, created_at, updated_at, paid_at, expires_at, closed_at,
  refunded_fen, next_query_at)
SELECT 'bench-order-' || i, 1 + i % 50000, 'wx00000000000dev01', 'o' || (1 + i % 50000), 1800,
  'Coffee', 'coffee',
  CASE WHEN i % 100 < 90 THEN 'PAID' WHEN i % 100 < 95 THEN 'CLOSED'
       WHEN i % 100 < 98 AND t > $now - 1800 THEN 'PAYING'
       WHEN i % 100 < 98 THEN 'CLOSED' ELSE 'REFUNDED' END,
  'wx' || i, t, CASE WHEN i % 100 < 90 OR i % 100 >= 98 THEN 'tx' || i ELSE '' END,
  t, t + 5,
  CASE WHEN i % 100 < 90 OR i % 100 >= 98 THEN t + 5 END,
  -- Orders expire 30 minutes after they are made: only the last 30 minutes' unpaid ones
  -- are still open (PAYING), older unpaid ones were closed at their expiry.
  t + 1800,
  CASE WHEN i % 100 BETWEEN 90 AND 97 AND t <= $now - 1800 THEN t + 1800 END,
  CASE WHEN i % 100 >= 98 THEN 1800 ELSE 0 END,
  $now + 3600
FROM (SELECT i, $now - $span + (i::bigint * $span) / $1 AS t
      FROM generate_series(1, $1) AS i) s;
INSERT INTO pay_notifications (received_at, out_trade_no, transaction_id, raw_body, verdict, accepted)
  SELECT paid_at, order_no, transaction_id, '<xml>...</xml>', 'applied', true FROM orders WHERE paid_at IS NOT NULL;
INSERT INTO paid_messages (order_no, app_id, openid, template_id, data, state, next_attempt_at, created_at, updated_at)
  SELECT order_no, app_id, openid, 'tmpl', '{}', 'SENT', paid_at, paid_at, paid_at FROM orders WHERE paid_at IS NOT NULL;
INSERT INTO refunds (out_refund_no, order_no, amount_fen, state, refund_id, created_at, updated_at, settled_at)
  SELECT 'r' || order_no, order_no, 1800, 'SUCCESS', 'rid' || id, paid_at + 60, paid_at + 90, paid_at + 90
  FROM orders WHERE state = 'REFUNDED';
INSERT INTO order_events (order_no, kind, payload, created_at)
  SELECT order_no, kind, '{}', at FROM (
    SELECT order_no, 'ORDER_PAID' AS kind, paid_at AS at FROM orders WHERE paid_at IS NOT NULL
    UNION ALL SELECT order_no, 'ORDER_CLOSED', closed_at FROM orders WHERE closed_at IS NOT NULL
    UNION ALL SELECT order_no, 'REFUND_SUCCEEDED', paid_at + 90 FROM orders WHERE state = 'REFUNDED'
  ) e ORDER BY at;
INSERT INTO webhook_deliveries (event_id, endpoint, state, attempts, next_attempt_at, created_at, updated_at)
  SELECT id, 'https://hooks.example/wxmp', 'DELIVERED', 1, created_at, created_at, created_at FROM order_events;
ANALYZE;
SQL
}

# Fastest "Execution Time" of three EXPLAIN ANALYZE runs, and the plan's scans ("Seq Scan on
# orders", "Index Scan using ...").
measure() { # db sql drop(0|1)
  local db=$1 sql=$2 drop=$3 best="" plan="" ms
  for _ in 1 2 3; do
    local script="BEGIN;"
    if [ "$drop" = 1 ]; then
      for idx in $new_indexes; do script+="DROP INDEX IF EXISTS $idx;"; done
    fi
    script+="EXPLAIN (ANALYZE, COSTS OFF) $sql; ROLLBACK;"
    local text
    text=$(psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$db" -v ON_ERROR_STOP=1 -qtA -c "$script" 2>&1) \
      || { say "query failed: $text"; return 1; }
    ms=$(printf '%s\n' "$text" | sed -n 's/.*Execution Time: \([0-9.]*\) ms.*/\1/p')
    if [ -z "$best" ] || awk -v a="$ms" -v b="$best" 'BEGIN{exit !(a<b)}'; then best=$ms; fi
    plan=$(printf '%s\n' "$text" | grep -oE '(Parallel )?(Seq Scan|Index Only Scan( Backward)?|Index Scan( Backward)?|Bitmap Index Scan)( using [a-z_]+)?( on [a-z_]+)?' \
      | sort -u | paste -sd';' | sed 's/;/; /g')
  done
  printf '%s|%s' "$best" "$plan"
}

IFS=, read -r -a size_list <<<"$sizes"
declare -A result
for n in "${size_list[@]}"; do
  db="wxmp_bench_data_${n}_$run_id"
  dbs+=("$db")
  admin -c "CREATE DATABASE \"$db\"" >/dev/null
  for up in crates/pay-service/migrations/postgres/*/up.sql; do
    psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$db" -v ON_ERROR_STOP=1 -q -f "$up" >/dev/null
  done
  started=$(date +%s)
  say "filling $n orders ..."
  fill_sql "$n" \
    | psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$db" -v ON_ERROR_STOP=1 -q >/dev/null
  say "filled $n orders in $(( $(date +%s) - started ))s"
  for q in "${queries[@]}"; do
    name=${q%%|*} sql=${q#*|}
    result["$n|$name|after"]=$(measure "$db" "$sql" 0)
    result["$n|$name|before"]=$(measure "$db" "$sql" 1)
  done
done

table=$(mktemp)
{
  echo "<!-- bench-data:begin (written by bench/data.sh; edits between the markers are lost) -->"
  echo "### Periodic queries against the data's size (\`make bench-data\`)"
  echo
  echo "PostgreSQL $(admin -c 'SHOW server_version' | cut -d' ' -f1), run $(date -u +%Y-%m-%dT%H:%MZ) on commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), load average $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Each cell: the fastest of three \`EXPLAIN ANALYZE\` execution times in ms, without → with issue 29's indexes; the plan with them below the table."
  echo
  header="| query |" rule="|---|"
  for n in "${size_list[@]}"; do header+=" $n orders |"; rule+="---|"; done
  echo "$header"; echo "$rule"
  for q in "${queries[@]}"; do
    name=${q%%|*}
    row="| $name |"
    for n in "${size_list[@]}"; do
      before=${result["$n|$name|before"]%%|*} after=${result["$n|$name|after"]%%|*}
      row+=" $before → $after |"
    done
    echo "$row"
  done
  echo
  last=${size_list[-1]}
  echo "Plans at $last orders, with the indexes:"
  echo
  for q in "${queries[@]}"; do
    name=${q%%|*}
    echo "- $name: ${result["$last|$name|after"]#*|}"
  done
  echo "<!-- bench-data:end -->"
} >"$table"

if grep -q '<!-- bench-data:begin' "$out" 2>/dev/null; then
  awk -v file="$table" '
    /<!-- bench-data:begin/ { while ((getline line < file) > 0) print line; skip = 1; next }
    /<!-- bench-data:end -->/ { skip = 0; next }
    !skip { print }' "$out" >"$out.tmp" && mv "$out.tmp" "$out"
else
  { echo; cat "$table"; } >>"$out"
fi
cat "$table"
rm -f "$table"
