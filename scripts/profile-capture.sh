#!/usr/bin/env bash
# Where the capture trigger's serialised section spends its time: runs pgbench
# single-row INSERTs into the tracked `orders` table at N clients on a throwaway
# cluster (fsync on) and samples every backend's wait event from pg_stat_activity
# every 10 ms, then prints the share of samples per wait event ("CPU" = running).
#
# Usage: scripts/profile-capture.sh [CLIENTS (default 32)] [SECONDS (default 10)]
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-32}
SECONDS_PER_RUN=${2:-10}
cargo build --release -q
. scripts/cluster.sh
start_cluster rowcast-profile
echo "INSERT INTO orders (customer_name, product_name) VALUES ('bench', 'tracked');" >"$DIR/tracked.sql"
psql -q "$URL" -c "CREATE TABLE wait_samples (kind text, event text)"

"$BIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U rowcast -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" \
  -f "$DIR/tracked.sql" postgres >"$DIR/pgbench.out" 2>&1 &
PGBENCH=$!
sleep 1
# One sampling session; the stats snapshot is cleared before each sample (it is
# otherwise fixed for the whole transaction).
SAMPLES=$(( (SECONDS_PER_RUN - 2) * 100 ))
psql -q "$URL" <<SQL
DO \$\$
BEGIN
  FOR i IN 1..$SAMPLES LOOP
    PERFORM pg_stat_clear_snapshot();
    INSERT INTO wait_samples
      SELECT coalesce(wait_event_type, 'CPU'), coalesce(wait_event, 'running')
      FROM pg_stat_activity
      WHERE application_name = 'pgbench' AND state = 'active';
    PERFORM pg_sleep(0.01);
  END LOOP;
END
\$\$;
SQL
wait "$PGBENCH"
echo "pgbench: $CLIENTS clients, ${SECONDS_PER_RUN}s, tracked single-row INSERT: $(awk '/^tps/ {print $3}' "$DIR/pgbench.out") commits/s"
echo "wait events of active pgbench backends, share of samples:"
psql -q "$URL" -A -F ' ' -t -c "
  SELECT round(100.0 * count(*) / sum(count(*)) OVER (), 1) || '%', kind || ':' || event
  FROM wait_samples GROUP BY kind, event ORDER BY count(*) DESC LIMIT 12"
