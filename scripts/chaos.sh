#!/usr/bin/env bash
# A randomized fault run against three release rowcast replicas and a durable
# throwaway PostgreSQL cluster, checked exactly-once (see RELIABILITY.md).
#
#   scripts/chaos.sh [--minutes N | --seconds N] [--seed S] [--clients N]
#                    [--capture trigger|wal] [--json FILE] [--plan-only]
#
# Exit status: 0 when the checker found nothing, 1 on any violation, 2 on a harness
# error.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

seconds=60 seed=1 clients=60 capture=trigger json= plan_only=
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) seconds=$(($2 * 60)); shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --capture) capture=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    --plan-only) plan_only=1; shift ;;
    *) echo "chaos.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$capture" in
  trigger|wal) ;;
  *) echo "chaos.sh: --capture trigger|wal" >&2; exit 2 ;;
esac

cargo build --release -q -p rowcast --bin rowcast -p rowcast-load --bin rowcast-chaos
if [ -n "$plan_only" ]; then
  exec target/release/rowcast-chaos --plan-only --seconds "$seconds" --seed "$seed" --capture "$capture" \
    --database-url x --rowcast x --pg-ctl x --log-dir x
fi

# Durable: fsync stays on (the default), so immediate restarts are real crash recovery.
start_cluster rowcast-chaos -c wal_level=logical -c max_connections=200
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
}
trap keep_logs EXIT
# pg_ctl as the cluster's owner, for the restarts the run makes.
cat >"$DIR/pg_ctl.sh" <<EOF
#!/bin/sh
exec ${RUN_AS[*]} "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" "\$@"
EOF
chmod 755 "$DIR/pg_ctl.sh"

ports="$(free_port),$(free_port),$(free_port)"
# nginx in front, running docs/deploy/nginx.conf with its listen and upstream lines
# replaced (as tests/scaleout.rs does); some clients and REST calls go through it.
nginx_args=()
stop_nginx() { :; }
if [ -x /usr/sbin/nginx ]; then
  nginx_port=$(free_port)
  ng="$DIR/nginx"
  mkdir -p "$ng"
  awk -v listen="127.0.0.1:$nginx_port" -v ports="$ports" '
    /upstream rowcast/ { up = 1 }
    up && /^[[:space:]]*}/ { up = 0 }
    /^[[:space:]]*listen 80;/ { print "    listen " listen ";"; next }
    up && /^[[:space:]]*server / {
      if (!done) {
        n = split(ports, p, ",")
        params = $0; sub(/^[[:space:]]*server[[:space:]]+[^[:space:]]+[[:space:]]*/, "", params)
        for (i = 1; i <= n; i++) print "    server 127.0.0.1:" p[i] " " params
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
  --log-dir "$logs" --capture "$capture" --ports "$ports" "${nginx_args[@]}" ${json:+--json "$json"}
