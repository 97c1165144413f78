#!/usr/bin/env bash
# WAL capture's cost, builds alternated on one cluster: for each round and client
# count, each build in turn captures (`rowcast --capture wal`) while pgbench inserts
# single rows into `orders`; prints commits/s, commits per applied batch, and CPU per
# commit of rowcast's backends (the capturer's inserts, the gateway's reads), the
# gateway and the walsender, from /proc. Run builds side by side this way: this
# machine drifts by tens of percent between hours.
# Usage: scripts/bench-capture-ab.sh SECONDS ROUNDS "CLIENTS…" NAME=BINARY…
#   e.g. scripts/bench-capture-ab.sh 8 2 "1 8 32" old=/tmp/rowcast-old new=target/release/rowcast
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { sed -n '2,9p' "$0"; exit 2; }
SECONDS_PER_RUN=$1 ROUNDS=$2
read -r -a CLIENTS <<<"$3"
shift 3
BUILDS=("$@")
ROWCAST_BIN=${BUILDS[0]#*=}
export ROWCAST_BIN
. scripts/cluster.sh
start_cluster rowcast-bench-ab -c wal_level=logical -c max_wal_senders=8 -c max_replication_slots=8
"$ROWCAST_BIN" capture wal --database-url "$URL" >/dev/null
echo "INSERT INTO orders (customer_name, product_name) VALUES ('bench', 'tracked');" >"$DIR/tracked.sql"
batches() { grep -c "capture batch applied" "$DIR/gateway.log" || true; }
printf '%-6s %-7s %-12s %7s %14s | %8s %8s %9s\n' round clients build tps commits/batch \
  rowcast gateway walsender
for round in $(seq "$ROUNDS"); do
  for clients in "${CLIENTS[@]}"; do
    for build in "${BUILDS[@]}"; do
      name=${build%%=*} binary=${build#*=}
      port=$(free_port)
      RUST_LOG=rowcast::pg::capture::wal=debug "$binary" --listen "127.0.0.1:$port" \
        --database-url "$URL" --capture wal 2>"$DIR/gateway.log" &
      gateway=$!
      until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done
      sleep 0.5
      backends=$(pids "backend_type = 'client backend' AND application_name LIKE 'rowcast%'")
      walsender=$(pids "backend_type = 'walsender'")
      # shellcheck disable=SC2086
      before=("$(ticks $backends)" "$(ticks "$gateway")" "$(ticks $walsender)" "$(batches)")
      tps=$("$BIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U rowcast -c "$clients" -j 2 \
        -T "$SECONDS_PER_RUN" -f "$DIR/tracked.sql" postgres 2>/dev/null |
        awk '/^tps/ {printf "%.0f", $3}')
      sleep 0.3
      # shellcheck disable=SC2086
      after=("$(ticks $backends)" "$(ticks "$gateway")" "$(ticks $walsender)" "$(batches)")
      commits=$((tps * SECONDS_PER_RUN))
      per() { echo $(( (after[$1] - before[$1]) * TICK_US / commits )); }
      printf '%-6s %-7s %-12s %7s %14s | %8s %8s %9s\n' "$round" "$clients" "$name" "$tps" \
        "$(awk -v c="$commits" -v b=$((after[3] - before[3])) 'BEGIN {printf "%.1f", b ? c / b : 0}')" \
        "$(per 0)" "$(per 1)" "$(per 2)"
      kill "$gateway"
      wait "$gateway" 2>/dev/null || true
    done
  done
done
