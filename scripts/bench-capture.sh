#!/usr/bin/env bash
# Capture cost: single-row INSERT commits/s into a tracked table (rowcast's deferred,
# lock-ordered trigger) vs an identical untracked one, with pgbench at 1, 8 and 32
# clients, against a throwaway cluster with default durability (fsync on).
# Usage: scripts/bench-capture.sh [seconds per run] [runs]   (defaults 10 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
RUNS=${2:-3}
cargo build --release -q
. scripts/cluster.sh
start_cluster rowcast-bench
psql -q "$URL" -c "CREATE TABLE untracked_orders (LIKE orders INCLUDING ALL)"
cat > "$DIR/tracked.sql" <<'SQL'
INSERT INTO orders (customer_name, product_name) VALUES ('bench', 'tracked');
SQL
cat > "$DIR/untracked.sql" <<'SQL'
INSERT INTO untracked_orders (customer_name, product_name) VALUES ('bench', 'untracked');
SQL
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "pgbench single-row INSERT commits/s, ${SECONDS_PER_RUN}s per run, median of $RUNS (tps | avg latency ms)"
for clients in 1 8 32; do
  for kind in untracked tracked; do
    tps=(); lat=()
    for _ in $(seq "$RUNS"); do
      out=$("$BIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U rowcast -c "$clients" -j 2 -T "$SECONDS_PER_RUN" -f "$DIR/$kind.sql" postgres 2>/dev/null)
      tps+=("$(echo "$out" | awk '/^tps/ {print $3}')")
      lat+=("$(echo "$out" | awk '/latency average/ {print $4}')")
    done
    printf '%-10s clients=%-3s tps=%-10s latency_ms=%s\n' "$kind" "$clients" \
      "$(printf '%s\n' "${tps[@]}" | median)" "$(printf '%s\n' "${lat[@]}" | median)"
  done
done
