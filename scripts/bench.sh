#!/usr/bin/env bash
# Reruns every benchmark of BENCHMARKS.md and prints medians:
#   1. criterion benches (benches/log.rs, benches/fanout.rs);
#   2. capture cost with pgbench (scripts/bench-capture.sh);
#   3. the load scenarios of issue 5's targets, each against a fresh release gateway
#      on a throwaway PostgreSQL cluster, measured by rowcast-load.
# Run it on a quiet machine: the figures are only as good as the machine is idle.
#
# Usage: scripts/bench.sh [--runs N] [--only NAME[,NAME…]] [--no-criterion]
#                         [--no-capture] [--smoke] [--keep DIR]
#   --runs N     runs per load scenario (default 3; medians over them)
#   --only LIST  load scenarios to run (names below, including the optional 10-minute
#                soak1000_x_100cps); implies --no-criterion --no-capture
#   --smoke      a few seconds per scenario at small scale, one run: checks that the
#                script and the harness work, not a measurement
#   --keep DIR   keep every run's JSON report and gateway log in DIR
#   --no-floor   skip the floor: by default each run of a load scenario with writes
#                (notify source, trigger capture) is followed by the same harness run against
#                rowcast-floor (load/src/floor), which writes each batch's pre-built
#                bytes once per client and nothing else; rowcast's CPU per delivery
#                is then stated as a ratio to it, measured minutes apart
# Environment: PG_FSYNC=off to run the cluster without fsync (default: on, as shipped);
# ROWCAST_BIN=path runs that gateway binary instead of target/release/rowcast (to
# alternate two builds in one session).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
ONLY=""
CRITERION=1
CAPTURE=1
SMOKE=0
KEEP=""
FLOOR=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --only) ONLY=$2; CRITERION=0; CAPTURE=0; shift 2 ;;
    --no-criterion) CRITERION=0; shift ;;
    --no-capture) CAPTURE=0; shift ;;
    --smoke) SMOKE=1; RUNS=1; CRITERION=0; CAPTURE=0; shift ;;
    --keep) KEEP=$2; shift 2 ;;
    --no-floor) FLOOR=0; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

# name | gateway flags | harness flags            (the targets of issue 5)
SCENARIOS=(
  "ws1000_x_1000cps|--source notify|--clients 1000 --ws-share 1 --rate 1000 --writers 8 --writer-depth 8 --duration 20s"
  "mixed10000_x_10cps|--source notify|--clients 10000 --ws-share 0.5 --rate 10 --writers 2 --duration 20s --connect-timeout 60s --source-addrs 32 --procs 2"
  "ws1000_x_50cps|--source notify|--clients 1000 --ws-share 1 --rate 50 --writers 2 --duration 20s"
  "one_x_100cps_notify|--source notify|--clients 1 --rate 100 --writers 1 --duration 20s"
  "one_x_100cps_poll|--source poll --poll-interval 500ms|--clients 1 --rate 100 --writers 1 --duration 20s"
  "one_x_100cps_wal|--source notify --capture wal|--clients 1 --rate 100 --writers 1 --duration 20s"
  "one_x_2000cps_wal|--source notify --capture wal|--clients 1 --rate 2000 --writers 8 --writer-depth 8 --duration 60s"
  "ws300_x_1000cps_trigger|--source notify|--clients 300 --ws-share 1 --rate 1000 --writers 8 --writer-depth 8 --duration 20s"
  "ws300_x_1000cps_wal|--source notify --capture wal|--clients 300 --ws-share 1 --rate 1000 --writers 8 --writer-depth 8 --duration 20s"
  "idle19000_mixed|--source notify|--idle --clients 19000 --ws-share 0.5 --procs 2 --duration 10s --connect-timeout 60s --source-addrs 32"
)
# Run only when named with --only (ten minutes each): the soak of issue 5's targets.
OPTIONAL_SCENARIOS=(
  "soak1000_x_100cps|--source notify --ring-capacity 16384|--clients 1000 --ws-share 1 --rate 100 --writers 2 --duration 600s"
)
if [ -n "$ONLY" ]; then SCENARIOS+=("${OPTIONAL_SCENARIOS[@]}"); fi
# The same shapes, small and short (--smoke).
SMOKE_SCENARIOS=(
  "ws200_x_200cps|--source notify|--clients 200 --ws-share 1 --rate 200 --writers 4 --duration 5s"
  "mixed300_x_10cps_2procs|--source notify|--clients 300 --ws-share 0.5 --rate 10 --writers 2 --duration 5s --procs 2"
  "one_x_100cps_notify|--source notify|--clients 1 --rate 100 --writers 1 --duration 5s"
  "one_x_100cps_poll|--source poll --poll-interval 500ms|--clients 1 --rate 100 --writers 1 --duration 5s"
  "idle400_mixed|--source notify|--idle --clients 400 --ws-share 0.5 --procs 2 --duration 3s"
)
if [ "$SMOKE" = 1 ]; then SCENARIOS=("${SMOKE_SCENARIOS[@]}"); fi

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "open files per process: soft $(ulimit -Sn), hard $(ulimit -Hn)"

cargo build --release -q --workspace
ROWCAST_BIN=${ROWCAST_BIN:-target/release/rowcast}

if [ "$CRITERION" = 1 ]; then
  echo; echo "== criterion (medians are criterion's own estimates) =="
  # The bench name (alone on a line when long), its time and throughput; not the
  # "change since the last run" lines, which carry percentages.
  cargo bench -q --bench log --bench fanout 2>&1 | grep -E '^[a-z_0-9/]+$|time:|thrpt:' | grep -v '%' || true
fi

if [ "$CAPTURE" = 1 ]; then
  echo; echo "== capture cost (pgbench) =="
  scripts/bench-capture.sh 10 "$RUNS"
fi

# A throwaway cluster for the load scenarios.
. scripts/cluster.sh
start_cluster rowcast-load -c "fsync=${PG_FSYNC:-on}" -c wal_level=logical -c max_replication_slots=8 -c max_wal_senders=8
GATEWAY_PID=""
cleanup() {
  if [ -n "$GATEWAY_PID" ]; then kill "$GATEWAY_PID" 2>/dev/null || true; wait "$GATEWAY_PID" 2>/dev/null || true; fi
  if [ -n "$KEEP" ]; then mkdir -p "$KEEP"; cp "$DIR"/*.json "$DIR"/*.log "$DIR"/*.rss "$KEEP"/ 2>/dev/null || true; fi
  stop_cluster
}
trap cleanup EXIT
echo; echo "== load scenarios: $RUNS run(s) each, fresh gateway per run, PostgreSQL fsync=${PG_FSYNC:-on} =="

start_gateway() { # $1: extra gateway flags; sets GATEWAY_PID and GATEWAY_ADDR
  local port; port=$(free_port)
  # A WAL scenario leaves the database in WAL mode (no triggers): switch it back before a
  # trigger-mode gateway, else nothing would capture (the gateway only warns).
  if [[ "$1" != *"--capture wal"* ]]; then
    RUST_LOG=warn "$ROWCAST_BIN" capture trigger --database-url "$URL" 2>>"$DIR/gateway.log" >/dev/null
  fi
  GATEWAY_ADDR="127.0.0.1:$port"
  # shellcheck disable=SC2086
  RUST_LOG=warn "$ROWCAST_BIN" --listen "$GATEWAY_ADDR" --database-url "$URL" $1 \
    2>>"$DIR/gateway.log" &
  GATEWAY_PID=$!
  for _ in $(seq 1 100); do
    if curl -fsS "http://$GATEWAY_ADDR/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "gateway did not become ready; see its log:" >&2; tail -20 "$DIR/gateway.log" >&2; exit 1
}
stop_gateway() {
  kill "$GATEWAY_PID" 2>/dev/null || true
  wait "$GATEWAY_PID" 2>/dev/null || true
  GATEWAY_PID=""
}
start_floor() { # like start_gateway, for rowcast-floor (it is ready once it listens)
  local port; port=$(free_port)
  GATEWAY_ADDR="127.0.0.1:$port"
  target/release/rowcast-floor --listen "$GATEWAY_ADDR" --database-url "$URL" 2>>"$DIR/floor.log" &
  GATEWAY_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "rowcast-floor did not start; see its log:" >&2; tail -20 "$DIR/floor.log" >&2; exit 1
}

for entry in "${SCENARIOS[@]}"; do
  IFS='|' read -r name gw_flags load_flags <<<"$entry"
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
  echo "-- $name: rowcast $gw_flags; rowcast-load $load_flags"
  for run in $(seq 1 "$RUNS"); do
    start_gateway "$gw_flags"
    status=0
    SAMPLER=""
    if [[ "$name" == soak* ]]; then
      # RSS every 10 s, to show it levels off once the ring is full.
      (while kill -0 "$GATEWAY_PID" 2>/dev/null; do
         awk '/^VmRSS/ {printf "%.1f\n", $2 / 1024}' "/proc/$GATEWAY_PID/status" 2>/dev/null
         sleep 10
       done) >"$DIR/$name.$run.rss" &
      SAMPLER=$!
    fi
    # shellcheck disable=SC2086
    target/release/rowcast-load --gateway "$GATEWAY_ADDR" --database-url "$URL" \
      --gateway-pid "$GATEWAY_PID" --json $load_flags >"$DIR/$name.$run.json" 2>"$DIR/$name.$run.log" || status=$?
    stop_gateway
    if [ -n "$SAMPLER" ]; then
      wait "$SAMPLER" 2>/dev/null || true
      echo "   run $run: gateway RSS MiB every 10 s: $(tr '\n' ' ' <"$DIR/$name.$run.rss")"
    fi
    if [ "$status" -ge 2 ]; then echo "   run $run: harness error"; cat "$DIR/$name.$run.log"; exit 1; fi
    # The floor right after, same harness flags. It follows the doorbell as
    # `--source notify` does; WAL scenarios would need rowcast's capturer running.
    if [ "$FLOOR" = 1 ] && [[ " $load_flags " != *" --idle "* ]] \
       && [[ "$gw_flags" == *"--source notify"* ]] && [[ "$gw_flags" != *"--capture wal"* ]]; then
      start_floor
      # shellcheck disable=SC2086
      target/release/rowcast-load --gateway "$GATEWAY_ADDR" --database-url "$URL" \
        --gateway-pid "$GATEWAY_PID" --json $load_flags >"$DIR/$name.$run.floor.json" 2>"$DIR/$name.$run.floor.log" || status=$?
      stop_gateway
      if [ "$status" -ge 2 ]; then echo "   run $run: harness error (floor)"; cat "$DIR/$name.$run.floor.log"; exit 1; fi
    fi
    if [ "$SMOKE" = 1 ]; then sed 's/^/   /' "$DIR/$name.$run.log"; fi
  done
  python3 - "$DIR" "$name" "$RUNS" <<'PY'
import json, statistics, sys
d, name, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
import os
reps = [json.load(open(f"{d}/{name}.{i}.json")) for i in range(1, runs + 1)]
floors = [json.load(open(f"{d}/{name}.{i}.floor.json")) if os.path.exists(f"{d}/{name}.{i}.floor.json") else None
          for i in range(1, runs + 1)]
def med(path):
    vals = []
    for r in reps:
        v = r
        for k in path.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None
def show(label, path, fmt="{:.2f}", scale=1.0):
    v = med(path)
    return f"{label} " + (fmt.format(v / scale) if v is not None else "-")
ok = sum(1 for r in reps if r["ok"])
fields = [f"ok {ok}/{runs}"]
if reps[0]["setup"]["mode"] == "idle":
    fields += [show("connected", "connect.ok", "{:.0f}"),
               show("failed", "connect.failed", "{:.0f}"),
               show("gateway KiB/conn", "gateway.rss_per_connection_bytes", "{:.2f}", 1024),
               show("idle RSS MiB", "gateway.idle.rss_bytes", "{:.1f}", 2**20),
               show("connect p99 ms", "connect.time.p99_ms")]
else:
    fields += [show("commits/s", "writes.achieved_rate", "{:.0f}"),
               show("delivered", "deliveries.delivered", "{:.0f}"),
               show("of", "deliveries.expected", "{:.0f}"),
               show("missing", "verification.missing", "{:.0f}"),
               show("dup", "verification.duplicates", "{:.0f}"),
               show("commit→rx p50", "latency_commit.p50_ms"),
               show("p99", "latency_commit.p99_ms"),
               show("p99.9", "latency_commit.p99_9_ms"),
               show("max", "latency_commit.max_ms"),
               show("send→rx p50", "latency_sent.p50_ms"),
               show("p99", "latency_sent.p99_ms"),
               show("ms; deliveries/s", "deliveries.per_s", "{:.0f}"),
               show("gateway µs/delivery", "gateway.cpu_us_per_delivery", "{:.3f}"),
               show("cores", "gateway.load_cpu_cores"),
               show("RSS max MiB", "gateway.load_max_rss_bytes", "{:.1f}", 2**20),
               show("events/fan-out write", "batching.events_per_fanout_write"),
               show("events/read", "batching.events_per_read"),
               show("harness µs/delivery", "harness.cpu_us_per_delivery", "{:.3f}")]
    pairs = [(r["gateway"].get("cpu_us_per_delivery"), f["gateway"].get("cpu_us_per_delivery"), f["ok"])
             for r, f in zip(reps, floors) if f is not None]
    pairs = [(g, fl, ok) for g, fl, ok in pairs if g and fl]
    if pairs:
        fields += [f"floor µs/delivery {statistics.median(fl for _, fl, _ in pairs):.3f}"
                   f" (ok {sum(1 for *_, ok in pairs if ok)}/{len(pairs)})",
                   f"rowcast/floor {statistics.median(g / fl for g, fl, _ in pairs):.2f}×"]
print("   median: " + ", ".join(fields))
PY
done
