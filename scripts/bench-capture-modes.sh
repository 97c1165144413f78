#!/usr/bin/env bash
# Capture cost by mode, interleaved in one run: single-row INSERT commits/s (pgbench)
# into an untracked table, a table captured by rowcast's trigger, the same table under
# WAL capture (a `rowcast --capture wal` gateway streaming it), and a table published to
# a bare pgoutput consumer (pg_recvlogical: what decoding alone costs, the floor for WAL
# mode), at 1, 8 and 32 clients, fsync on. Each round runs every kind once per client
# count, so a machine that slows down mid-run slows every kind alike.
# Usage: scripts/bench-capture-modes.sh [seconds per run] [rounds]   (defaults 10 and 2)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
ROUNDS=${2:-2}
cargo build --release -q
. scripts/cluster.sh
start_cluster rowcast-bench-modes -c wal_level=logical -c max_wal_senders=8 -c max_replication_slots=8
db_url() { echo "postgres://rowcast@127.0.0.1:$PORT/$1?sslmode=disable"; }
# trigger mode and the untracked table: database postgres (migrated by start_cluster).
psql -q "$URL" -c "CREATE TABLE untracked_orders (LIKE orders INCLUDING ALL)"
# WAL mode: database walmode, switched by the CLI, captured by a gateway.
psql -q "$URL" -c "CREATE DATABASE walmode" -c "CREATE DATABASE bare"
target/release/rowcast capture wal --database-url "$(db_url walmode)" >/dev/null
GW_PORT=$(free_port)
target/release/rowcast --listen "127.0.0.1:$GW_PORT" --database-url "$(db_url walmode)" \
  --capture wal --ring-capacity 4096 2>"$DIR/gateway.log" &
GW=$!
# The bare consumer: database bare, orders untracked but published, pg_recvlogical.
target/release/rowcast migrate --database-url "$(db_url bare)" >/dev/null
psql -q "$(db_url bare)" -c "SELECT realtime.untrack('orders')" \
  -c "ALTER TABLE orders REPLICA IDENTITY FULL" -c "CREATE PUBLICATION bare FOR TABLE orders" \
  -c "SELECT pg_create_logical_replication_slot('bare', 'pgoutput')" >/dev/null
"$BIN/pg_recvlogical" -d "$(db_url bare)" -S bare --start -o proto_version=1 -o publication_names=bare \
  -f /dev/null 2>"$DIR/recvlogical.log" &
RECV=$!
cleanup() { kill "$GW" "$RECV" 2>/dev/null || true; stop_cluster; }
trap cleanup EXIT
until curl -sf "http://127.0.0.1:$GW_PORT/readyz" >/dev/null; do sleep 0.2; done

cat > "$DIR/tracked.sql" <<'SQL'
INSERT INTO orders (customer_name, product_name) VALUES ('bench', 'tracked');
SQL
cat > "$DIR/untracked.sql" <<'SQL'
INSERT INTO untracked_orders (customer_name, product_name) VALUES ('bench', 'untracked');
SQL
run() { # kind clients -> "tps latency_ms"
  local db=postgres script=tracked
  case "$1" in
    untracked) script=untracked ;;
    wal) db=walmode ;;
    pgoutput) db=bare ;;
  esac
  "$BIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U rowcast -c "$2" -j 2 -T "$SECONDS_PER_RUN" \
    -f "$DIR/$script.sql" "$db" 2>/dev/null |
    awk '/^tps/ {tps=$3} /latency average/ {lat=$4} END {printf "%.0f %s\n", tps, lat}'
}
echo "pgbench single-row INSERT, ${SECONDS_PER_RUN}s per run, $ROUNDS interleaved rounds (tps, average latency ms)"
printf '%-8s %-7s %-10s %10s %12s\n' round clients kind tps latency_ms
for round in $(seq "$ROUNDS"); do
  for clients in 1 8 32; do
    for kind in untracked trigger wal pgoutput; do
      read -r tps lat < <(run "$kind" "$clients")
      printf '%-8s %-7s %-10s %10s %12s\n' "$round" "$clients" "$kind" "$tps" "$lat"
    done
  done
done
# WAL mode must have kept up: every row inserted is in change_log.
deadline=$((SECONDS + 60))
while :; do
  rows=$(psql -tAq "$(db_url walmode)" -c "SELECT count(*) FROM orders")
  captured=$(psql -tAq "$(db_url walmode)" -c "SELECT count(*) FROM realtime.change_log")
  [ "$rows" = "$captured" ] && break
  [ "$SECONDS" -lt "$deadline" ] || { echo "WAL capture behind: $captured of $rows"; exit 1; }
  sleep 0.5
done
echo "WAL mode: all $captured inserts captured; $(curl -s "http://127.0.0.1:$GW_PORT/metrics" | grep -E '^rowcast_capture_lag_bytes')"
