#!/usr/bin/env bash
# Stop the daemons that tools/slurm/up.sh started (by the pid files in its state folder),
# nothing else: a cluster started by other means is left running.
set -uo pipefail

STATE=${SONOSEG_SLURM_DIR:-/tmp/sonoseg-slurm}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

stopped=0
for daemon in slurmd slurmctld slurmdbd mariadb munged; do
  pidfile="$STATE/$daemon.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    $SUDO kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    echo "slurm-down: stopped $daemon (pid $pid)"
    stopped=$((stopped + 1))
  fi
  $SUDO rm -f "$pidfile"
done
[ "$stopped" -gt 0 ] || echo "slurm-down: no daemon of tools/slurm/up.sh was running"
