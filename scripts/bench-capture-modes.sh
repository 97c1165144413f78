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
"${ROWCAST_BIN:-target/release/rowcast}" capture wal --database-url "$(db_url walmode)" >/dev/null
GW_PORT=$(free_port)
"${ROWCAST_BIN:-target/release/rowcast}" --listen "127.0.0.1:$GW_PORT" --database-url "$(db_url walmode)" \
  --capture wal --ring-capacity 4096 2>"$DIR/gateway.log" &
GW=$!
# The bare consumer: database bare, orders untracked but published, pg_recvlogical.
"${ROWCAST_BIN:-target/release/rowcast}" migrate --database-url "$(db_url bare)" >/dev/null
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
# Where the CPU goes, per commit: read from /proc around each run. The writers'
# backends end with the run, so their CPU is the postmaster's reaped children's (with
# any autovacuum worker that ended meanwhile); the rest are long-lived processes found
# in pg_stat_activity before the run.
POSTMASTER=$(head -1 "$DIR/data/postmaster.pid")
reaped() { sed 's/.*) //' "/proc/$POSTMASTER/stat" | awk '{print $14 + $15}'; }
children_ticks() { # the CPU of the shell's finished children (pgbench) as `times` wrote it to $1, in ticks
  tail -1 "$1" | awk -v hz="$(getconf CLK_TCK)" '{
    split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d\n", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * hz }'
}
run() { # kind clients -> "tps latency_ms" and, in $DIR/cpu, µs per commit by process
  local db=postgres script=tracked own=()
  case "$1" in
    untracked) script=untracked ;;
    wal) db=walmode; own=("$GW") ;;
    pgoutput) db=bare; own=("$RECV") ;;
  esac
  local walsender capturer background
  walsender=$(pids "backend_type = 'walsender' AND datname = '$db'")
  capturer=$(pids "backend_type = 'client backend' AND datname = '$db' AND application_name LIKE 'rowcast%'")
  background=$(pids "backend_type NOT IN ('client backend', 'walsender')")
  times >"$DIR/times" # here: in a $(…) subshell pgbench would not be a child
  # shellcheck disable=SC2086
  local before=("$(reaped)" "$(ticks $walsender)" "$(ticks $capturer)" "$(ticks "${own[@]}")" \
    "$(ticks $background)" "$(children_ticks "$DIR/times")")
  "$BIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U rowcast -c "$2" -j 2 -T "$SECONDS_PER_RUN" \
    -f "$DIR/$script.sql" "$db" >"$DIR/pgbench.out" 2>/dev/null
  # The postmaster adds a backend's CPU to its own children's once it has reaped it.
  local gone=$((SECONDS + 10))
  while [ "$(psql -tAq "$URL" -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")" != 0 ] \
    && [ "$SECONDS" -lt "$gone" ]; do sleep 0.05; done
  sleep 0.2
  times >"$DIR/times"
  # shellcheck disable=SC2086
  local after=("$(reaped)" "$(ticks $walsender)" "$(ticks $capturer)" "$(ticks "${own[@]}")" \
    "$(ticks $background)" "$(children_ticks "$DIR/times")")
  local tps lat
  read -r tps lat < <(awk '/^tps/ {tps=$3} /latency average/ {lat=$4} END {printf "%.0f %s\n", tps, lat}' "$DIR/pgbench.out")
  local commits k out=()
  commits=$(awk -v t="$tps" -v s="$SECONDS_PER_RUN" 'BEGIN {n = int(t * s); print (n > 0 ? n : 1)}')
  for k in 0 1 2 3 4 5; do
    out+=("$(( (after[k] - before[k]) * TICK_US / commits ))")
  done
  echo "${out[*]}" >"$DIR/cpu"
  echo "$tps $lat"
}
echo "pgbench single-row INSERT, ${SECONDS_PER_RUN}s per run, $ROUNDS interleaved rounds (tps, average latency ms)"
echo "CPU per commit in µs: writers = the pgbench backends (reaped), walsender, rowcast's"
echo "backends (the capturer's inserts, the gateway's reads), own = the gateway or pg_recvlogical,"
echo "bg = PostgreSQL's background processes, pgbench = the client"
printf '%-6s %-7s %-10s %8s %10s | %7s %9s %7s %5s %5s %7s %6s\n' round clients kind tps latency_ms \
  writers walsender rowcast own bg pgbench total
for round in $(seq "$ROUNDS"); do
  for clients in 1 8 32; do
    for kind in untracked trigger wal pgoutput; do
      read -r tps lat < <(run "$kind" "$clients")
      read -r -a cpu <"$DIR/cpu"
      printf '%-6s %-7s %-10s %8s %10s | %7s %9s %7s %5s %5s %7s %6s\n' "$round" "$clients" "$kind" "$tps" "$lat" \
        "${cpu[0]}" "${cpu[1]}" "${cpu[2]}" "${cpu[3]}" "${cpu[4]}" "${cpu[5]}" \
        "$((cpu[0] + cpu[1] + cpu[2] + cpu[3] + cpu[4] + cpu[5]))"
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
