#!/usr/bin/env bash
# What each replica costs the database: one throwaway cluster, K rowcast replicas (each
# with one idle SSE client, curl -N /events), pgbench inserting single rows into the
# tracked `orders` table at a steady rate. Per run it prints, from /proc (utime+stime):
#   pg_us/commit       CPU of every postgres process (backends that exited during the
#                      run are counted through the postmaster's cutime+cstime)
#   replica_us/commit  CPU of one rowcast process (mean over the K)
#   reads/commit       change_log reads per commit per replica (pg_stat_statements)
#   rows/read          change_log rows each read returned (empty reads pull it down)
#   pg_read_us         PostgreSQL's planning + execution time per read
#   latency_ms         pgbench's average commit latency
#   nats_us/commit     CPU of the relay's nats-server (relay mode; 0 otherwise)
# With several --build NAME=PATH, every K runs each build in turn (alternated in one
# session), so a comparison does not rest on the machine's drift between hours; with
# --modes "pg relay", each build also runs with the NATS JetStream relay (a
# nats-server -js of the script's own on a free port; a fresh stream per run),
# alternated likewise. --capture wal runs the replicas with WAL capture (the cluster
# gets wal_level=logical): their doorbell then carries the events (the payload path).
#
# Usage: scripts/replica-cost.sh [--seconds 15] [--rate 500] [--replicas "1 4 8"]
#          [--runs 1] [--build NAME=PATH]... [--modes "pg relay"] [--capture wal]
#          [--perf DIR] [-- rowcast flags…]
#   --perf DIR   also record `perf record -a -g` during the largest K of the first
#                build and write DIR/postgres.txt and DIR/rowcast.txt (top symbols of
#                this cluster's postgres processes and of the replicas, selected by
#                pid: other PostgreSQL servers and tokio programs on the machine share
#                the command names)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=15
RATE=500
REPLICAS="1 4 8"
RUNS=1
BUILDS=()
PERF_DIR=
MODES=pg
CAPTURE=trigger
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --replicas) REPLICAS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --build) BUILDS+=("$2"); shift 2 ;;
    --perf) PERF_DIR=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    --capture) CAPTURE=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
EXTRA_FLAGS=("$@")
if [ ${#BUILDS[@]} -eq 0 ]; then
  cargo build --release -q
  BUILDS=("current=target/release/rowcast")
fi
# The cluster is migrated by the first build.
ROWCAST_BIN=${BUILDS[0]#*=}
export ROWCAST_BIN

. scripts/cluster.sh
PIDS=()
NATS_PID=
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -z "$NATS_PID" ] || kill "$NATS_PID" 2>/dev/null || true
  stop_cluster
}
CLUSTER_OPTIONS=(-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_planning=on)
[ "$CAPTURE" = trigger ] || CLUSTER_OPTIONS+=(-c wal_level=logical)
start_cluster rowcast-replicas "${CLUSTER_OPTIONS[@]}"
trap cleanup EXIT
EXTRA_FLAGS+=(--capture "$CAPTURE")
if [[ " $MODES " == *" relay "* ]]; then
  NATS_PORT=$(free_port)
  mkdir -p "$DIR/nats"
  /usr/sbin/nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DIR/nats" >"$DIR/nats.log" 2>&1 &
  NATS_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break
    sleep 0.1
  done
fi
psql -q "$URL" -c "CREATE EXTENSION pg_stat_statements"
echo "INSERT INTO orders (customer_name, product_name) VALUES ('bench', 'replica-cost');" >"$DIR/insert.sql"
POSTMASTER=$(head -1 "$DIR/data/postmaster.pid")

# utime+stime (ticks) of the given pids; fields counted after the ")" of comm.
cpu_of() {
  local total=0 pid fields
  for pid in "$@"; do
    fields=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    set -- $fields
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}
# Every postgres process: the postmaster's children alive now, plus the postmaster's
# own time and that of its children already reaped (cutime, cstime).
pg_cpu() {
  local fields children
  fields=$(sed 's/.*) //' "/proc/$POSTMASTER/stat")
  children=$(pgrep -P "$POSTMASTER" | tr '\n' ' ')
  set -- $fields
  echo $(( ${12} + ${13} + ${14} + ${15} + $(cpu_of $children) ))
}

printf '%-16s %3s %4s %8s %12s %17s %12s %9s %10s %10s %14s\n' build K run commits pg_us/commit \
  replica_us/commit reads/commit rows/read pg_read_us latency_ms nats_us/commit
largest=$(echo $REPLICAS | tr ' ' '\n' | sort -n | tail -1)
for k in $REPLICAS; do
  for run in $(seq "$RUNS"); do
    for build in "${BUILDS[@]}"; do
    for mode in $MODES; do
      name=${build%%=*}/$mode
      bin=${build#*=}
      mode_flags=()
      [ "$mode" = pg ] || mode_flags=(--relay "nats://127.0.0.1:$NATS_PORT" --relay-stream "cost_${k}_${run}_${build%%=*}")
      PIDS=()
      replicas=()
      for _ in $(seq "$k"); do
        port=$(free_port)
        RUST_LOG=warn "$bin" --listen "127.0.0.1:$port" --database-url "$URL" "${EXTRA_FLAGS[@]}" "${mode_flags[@]}" \
          >>"$DIR/rowcast.log" 2>&1 &
        replicas+=($!)
        PIDS+=($!)
        for _ in $(seq 100); do
          curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
          sleep 0.1
        done
        curl -sN "http://127.0.0.1:$port/events" >/dev/null &
        PIDS+=($!)
      done
      sleep 2
      psql -q "$URL" -c "SELECT pg_stat_statements_reset()" >/dev/null
      pg_before=$(pg_cpu)
      rc_before=$(cpu_of "${replicas[@]}")
      nats_before=0
      [ "$mode" = pg ] || nats_before=$(cpu_of "$NATS_PID")
      perf_pid=
      if [ -n "$PERF_DIR" ] && [ "$k" = "$largest" ] && [ "$build" = "${BUILDS[0]}" ] && [ "$run" = 1 ]; then
        mkdir -p "$PERF_DIR"
        perf record -q -a -g -F 499 -o "$PERF_DIR/perf.data" -- sleep "$SECONDS_PER_RUN" 2>/dev/null &
        perf_pid=$!
      fi
      "$BIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U rowcast -c 4 -j 1 -R "$RATE" \
        -T "$SECONDS_PER_RUN" -f "$DIR/insert.sql" postgres >"$DIR/pgbench.out" 2>/dev/null &
      pgbench=$!
      if [ -n "$perf_pid" ]; then
        sleep 1
        echo "$POSTMASTER $(pgrep -P "$POSTMASTER" | tr '\n' ' ')" | tr ' ' '\n' | grep . | paste -sd, >"$PERF_DIR/postgres.pids"
        printf '%s\n' "${replicas[@]}" | paste -sd, >"$PERF_DIR/rowcast.pids"
      fi
      wait "$pgbench"
      # Let pgbench's backends exit and be reaped, so that their time is in the
      # postmaster's cutime rather than in neither (an exiting process's stat).
      sleep 0.5
      out=$(cat "$DIR/pgbench.out")
      pg_after=$(pg_cpu)
      rc_after=$(cpu_of "${replicas[@]}")
      nats_after=0
      [ "$mode" = pg ] || nats_after=$(cpu_of "$NATS_PID")
      [ -z "$perf_pid" ] || wait "$perf_pid"
      commits=$(echo "$out" | awk '/number of transactions actually processed/ {print $6}')
      latency=$(echo "$out" | awk '/latency average/ {print $4}')
      reads=$(psql -At "$URL" -c "SELECT coalesce(sum(calls), 0) || ' ' ||
          coalesce(round(sum(rows)::numeric / nullif(sum(calls), 0), 2), 0) || ' ' ||
          coalesce(round(sum(total_exec_time + total_plan_time)::numeric * 1000 / nullif(sum(calls), 0), 1), 0)
        FROM pg_stat_statements WHERE query LIKE '%FROM realtime.change_log%WHERE id >%'")
      read -r read_calls read_rows read_us <<<"$reads"
      awk -v name="$name" -v k="$k" -v run="$run" -v c="$commits" -v pg=$((pg_after - pg_before)) \
        -v rc=$((rc_after - rc_before)) -v tick="$TICK_US" -v reads="$read_calls" -v rows="$read_rows" -v read_us="$read_us" \
        -v lat="$latency" -v nats=$((nats_after - nats_before)) 'BEGIN {
          printf "%-16s %3d %4d %8d %12.0f %17.0f %12.2f %9s %10s %10s %14.0f\n", name, k, run, c,
            pg * tick / c, rc * tick / k / c, reads / k / c, rows, read_us, lat, nats * tick / c }'
      for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
      for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
      PIDS=()
    done
    done
  done
done
if [ -n "$PERF_DIR" ] && [ -f "$PERF_DIR/perf.data" ]; then
  for who in postgres rowcast; do
    perf report -i "$PERF_DIR/perf.data" --no-children --pid "$(cat "$PERF_DIR/$who.pids")" \
      --sort sym --stdio -g none --percentage relative --percent-limit 0.5 2>/dev/null \
      | grep -v '^$' | head -70 >"$PERF_DIR/$who.txt"
  done
  echo "profiles: $PERF_DIR/postgres.txt $PERF_DIR/rowcast.txt"
fi
