# Sourced by the benchmark scripts: a throwaway PostgreSQL cluster started from the
# machine's binaries (Debian keeps them in /usr/lib/postgresql/*/bin), migrated with
# rowcast (build target/release/rowcast first, or set ROWCAST_BIN to another build),
# stopped and removed on exit.
#
#   start_cluster NAME [-c option=value …]   sets BIN, DIR, PORT and URL; the cluster's
#                                            log is $DIR/pg.log
#   stop_cluster                              what the EXIT trap runs (a script with
#                                            its own EXIT trap calls it from there)
#   free_port                                 prints a free TCP port on 127.0.0.1
#   ticks PID…                                prints the CPU (utime + stime) the
#                                            processes used so far, in clock ticks
#                                            ($TICK_US microseconds each)
#   pids CONDITION                            prints the pids of the cluster's
#                                            pg_stat_activity rows matching CONDITION

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

TICK_US=$((1000000 / $(getconf CLK_TCK)))
ticks() {
  local total=0 pid fields
  for pid in "$@"; do
    fields=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + $(echo "$fields" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

pids() {
  psql -tAq "$URL" -c "SELECT pid FROM pg_stat_activity WHERE $1" | tr '\n' ' '
}

start_cluster() {
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  DIR=$(mktemp -d "/tmp/$1-XXXX")
  shift
  PORT=$(free_port)
  RUN_AS=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; RUN_AS=(runuser -u postgres --); fi
  trap stop_cluster EXIT
  "${RUN_AS[@]}" "$BIN/initdb" -D "$DIR/data" -U rowcast --auth=trust >/dev/null
  "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" -w \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=100 $*" \
    start >/dev/null
  URL="postgres://rowcast@127.0.0.1:$PORT/postgres?sslmode=disable"
  "${ROWCAST_BIN:-target/release/rowcast}" migrate --database-url "$URL" >/dev/null
}

stop_cluster() {
  "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
