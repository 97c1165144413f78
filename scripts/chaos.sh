#!/usr/bin/env bash
# A randomized fault run against three release rowcast replicas and a durable
# throwaway PostgreSQL cluster, checked exactly-once (see RELIABILITY.md).
#
#   scripts/chaos.sh [--minutes N | --seconds N] [--seed S] [--clients N]
#                    [--capture trigger|wal] [--json FILE] [--no-netns]
#                    [--plan-only [--plan-netns]]
#
# Exit status: 0 when the checker found nothing, 1 on any violation, 2 on a harness
# error.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

seconds=60 seed=1 clients=60 capture=trigger json='' plan_only='' no_netns='' plan_netns=
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) seconds=$(($2 * 60)); shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --capture) capture=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    --plan-only) plan_only=1; shift ;;
    --plan-netns) plan_netns=1; shift ;; # --plan-only: the schedule of a run with a namespace
    --no-netns) no_netns=1; shift ;;
    *) echo "chaos.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$capture" in
  trigger|wal) ;;
  *) echo "chaos.sh: --capture trigger|wal" >&2; exit 2 ;;
esac

cargo build --release -q -p rowcast --bin rowcast -p rowcast-load --bin rowcast-chaos

# Network faults: replica 0 runs in the namespace $NS, reached through two veth pairs
# with private addresses only this script creates: 10.231.0.1 (host, where PostgreSQL
# also listens) <-> 10.231.0.2 (replica 0's PostgreSQL link), and 10.231.1.1 (host,
# clients and nginx) <-> 10.231.1.2 (replica 0's listen address). The interface names
# are fixed in load/src/chaos/cluster.rs. Needs root and a permitted `ip netns`;
# otherwise (or with --no-netns) the run goes on without network faults.
NS=rowcast-chaos-r0
net_down() {
  ip netns del "$NS" 2>/dev/null || true # takes the namespace ends of the veths along
  ip link del rcx0pg-h 2>/dev/null || true
  ip link del rcx0cl-h 2>/dev/null || true
}
net_up() {
  [ "$(id -u)" = 0 ] && command -v ip >/dev/null && command -v tc >/dev/null || return 1
  net_down # a killed previous run's leftovers
  # Only our own addresses: refuse if anything else on the machine uses 10.231.0.0/23.
  if ip -4 addr show | grep -q ' 10\.231\.[01]\.'; then return 1; fi
  ip netns add "$NS" || return 1
  ip link add rcx0pg-h type veth peer name rcx0pg-n netns "$NS" &&
    ip link add rcx0cl-h type veth peer name rcx0cl-n netns "$NS" &&
    ip addr add 10.231.0.1/30 dev rcx0pg-h && ip link set rcx0pg-h up &&
    ip addr add 10.231.1.1/30 dev rcx0cl-h && ip link set rcx0cl-h up &&
    ip -n "$NS" addr add 10.231.0.2/30 dev rcx0pg-n && ip -n "$NS" link set rcx0pg-n up &&
    ip -n "$NS" addr add 10.231.1.2/30 dev rcx0cl-n && ip -n "$NS" link set rcx0cl-n up &&
    ip -n "$NS" link set lo up && return 0
  net_down
  return 1
}
netns='' iptables='' netem=
if [ -z "$plan_only" ] && [ -z "$no_netns" ] && net_up; then
  netns=$NS
  trap net_down EXIT
  if ! command -v iptables >/dev/null; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null 2>&1 || true
  fi
  # Partitions drop with iptables when it works in the namespace, else with netem loss 100%.
  if ip netns exec "$NS" iptables -w -L INPUT >/dev/null 2>&1; then iptables=1; fi
  # Some kernels have no sch_netem; the harness then degrades links without it.
  if tc qdisc add dev rcx0pg-h root netem delay 1ms 2>/dev/null; then
    netem=1
    tc qdisc del dev rcx0pg-h root
  fi
elif [ -z "$plan_only" ]; then
  echo "chaos.sh: no network namespace (not root, no ip/tc, --no-netns, or not permitted): no network faults" >&2
fi

if [ -n "$plan_only" ]; then
  exec target/release/rowcast-chaos --plan-only --seconds "$seconds" --seed "$seed" --capture "$capture" \
    --database-url x --rowcast x --pg-ctl x --log-dir x ${plan_netns:+--netns "$NS"}
fi

# Durable: fsync stays on (the default), so immediate restarts are real crash recovery.
listen=127.0.0.1
[ -z "$netns" ] || listen=127.0.0.1,10.231.0.1
start_cluster rowcast-chaos -c wal_level=logical -c max_connections=300 -c listen_addresses="$listen"
if [ -n "$netns" ]; then
  echo "host all all 10.231.0.2/32 trust" >>"$DIR/data/pg_hba.conf"
  "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" reload >/dev/null
fi
logs="$DIR/logs"
mkdir -p "$logs"
keep_logs() {
  status=$?
  if [ "$status" != 0 ]; then
    saved=$(mktemp -d /tmp/rowcast-chaos-logs-XXXX)
    cp -a "$logs" "$DIR/pg.log" "$saved/" 2>/dev/null || true
    echo "chaos.sh: logs kept in $saved" >&2
  fi
  stop_nginx
  stop_cluster
  [ -z "$netns" ] || net_down
}
trap keep_logs EXIT
# pg_ctl as the cluster's owner, for the restarts the run makes.
cat >"$DIR/pg_ctl.sh" <<EOF
#!/bin/sh
exec ${RUN_AS[*]} "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" "\$@"
EOF
chmod 755 "$DIR/pg_ctl.sh"

ports="$(free_port),$(free_port),$(free_port)"
# Where each replica listens: loopback, but replica 0 inside the namespace when there is one.
first=127.0.0.1
[ -z "$netns" ] || first=10.231.1.2
addrs=
for p in ${ports//,/ }; do
  if [ -z "$addrs" ]; then addrs="$first:$p"; else addrs="$addrs,127.0.0.1:$p"; fi
done
# nginx in front, running docs/deploy/nginx.conf with its listen and upstream lines
# replaced (as tests/scaleout.rs does); some clients and REST calls go through it.
nginx_args=()
stop_nginx() { :; }
if [ -x /usr/sbin/nginx ]; then
  nginx_port=$(free_port)
  ng="$DIR/nginx"
  mkdir -p "$ng"
  awk -v listen="127.0.0.1:$nginx_port" -v addrs="$addrs" '
    /upstream rowcast/ { up = 1 }
    up && /^[[:space:]]*}/ { up = 0 }
    /^[[:space:]]*listen 80;/ { print "    listen " listen ";"; next }
    up && /^[[:space:]]*server / {
      if (!done) {
        n = split(addrs, a, ",")
        params = $0; sub(/^[[:space:]]*server[[:space:]]+[^[:space:]]+[[:space:]]*/, "", params)
        for (i = 1; i <= n; i++) print "    server " a[i] " " params
        done = 1
      }
      next
    }
    { print }' docs/deploy/nginx.conf >"$ng/rowcast.conf"
  cat >"$ng/nginx.conf" <<EOF
worker_processes 1;
error_log $ng/error.log info;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $ng/body;
  proxy_temp_path $ng/proxy;
  fastcgi_temp_path $ng/fastcgi;
  uwsgi_temp_path $ng/uwsgi;
  scgi_temp_path $ng/scgi;
  include $ng/rowcast.conf;
}
EOF
  /usr/sbin/nginx -p "$ng" -e "$ng/error.log" -c "$ng/nginx.conf" \
    -g "daemon off; pid $ng/nginx.pid;" &
  nginx_pid=$!
  stop_nginx() { kill -TERM "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; }
  nginx_args=(--nginx-port "$nginx_port")
else
  echo "chaos.sh: no /usr/sbin/nginx: every client connects directly" >&2
fi
target/release/rowcast-chaos --seconds "$seconds" --seed "$seed" --clients "$clients" \
  --database-url "$URL" --rowcast target/release/rowcast --pg-ctl "$DIR/pg_ctl.sh" \
  --log-dir "$logs" --capture "$capture" --addrs "$addrs" "${nginx_args[@]}" ${json:+--json "$json"} \
  ${netns:+--netns "$netns" --netns-database-url "${URL/127.0.0.1/10.231.0.1}"} ${iptables:+--iptables} ${netem:+--netem}
