#!/usr/bin/env bash
# A one-node SLURM cluster on this host (Debian's slurm-wlm, munge, and slurmdbd on a private
# MariaDB so that sacct answers: submitit asks sacct whether a job ended), for trying and
# testing hydra/launcher=slurm and shared Optuna studies without a real cluster. Idempotent: a
# running cluster is reused. Everything it writes lives in $SONOSEG_SLURM_DIR (default
# /tmp/sonoseg-slurm) except /etc/slurm/slurm.conf and slurmdbd.conf, which SLURM's commands
# read; an existing slurm.conf not written by this script is never replaced. The database
# listens on 127.0.0.1:3307 only, beside any MariaDB of the host. tools/slurm/down.sh stops only the
# daemons this script started (their pid files are in the state folder).
set -euo pipefail

STATE=${SONOSEG_SLURM_DIR:-/tmp/sonoseg-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by sonoseg tools/slurm/up.sh"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
say() { echo "slurm-up: $*"; }

node_state() { sinfo --noheader --format=%T 2>/dev/null | head -n1; }

if command -v sinfo >/dev/null && [ -n "$(node_state)" ]; then
  say "a cluster is already running (node $(node_state)); reusing it"
  exit 0
fi

missing=0
for tool in slurmctld slurmd slurmdbd munged sbatch sacct mariadbd mariadb-install-db; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing=1
done
if [ "$missing" = 1 ]; then
  say "installing Debian's slurm-wlm, slurmdbd, munge and mariadb-server"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi

if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  echo "slurm-up: $CONF exists and was not written by this script; not replacing it." >&2
  echo "slurm-up: start that cluster's daemons yourself, or move the file away." >&2
  exit 1
fi

$SUDO mkdir -p "$STATE"/{state,spool,log} /run/munge
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
NODE=$(hostname -s)
CPUS=$(nproc)
# Leave 1 GiB to the host; submitit asks for --mem, which must fit under RealMemory.
MEMORY=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
$SUDO tee "$CONF" >/dev/null <<CONFIG
$MARK; state, logs and pid files in $STATE
ClusterName=sonoseg
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# The simplest plugins that work in a container: no cgroups, no MPI; accounting by slurmdbd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
NodeName=$NODE CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONFIG

if ! munge -n >/dev/null 2>&1; then
  [ -f /etc/munge/munge.key ] || $SUDO /usr/sbin/mungekey --create
  $SUDO chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  if [ -z "$SUDO" ]; then runuser -u munge -- /usr/sbin/munged; else sudo -u munge /usr/sbin/munged; fi
  cp /run/munge/munged.pid "$STATE/munged.pid"
  say "munged started"
fi

$SUDO tee /etc/slurm/slurmdbd.conf >/dev/null <<CONFIG
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONFIG
$SUDO chmod 600 /etc/slurm/slurmdbd.conf

# The accounting database: a private MariaDB in the state folder.
if ! pid_alive "$STATE/mariadb.pid"; then
  if [ ! -d "$STATE/mysql/mysql" ]; then
    $SUDO mariadb-install-db --user=root --datadir="$STATE/mysql" \
      --auth-root-authentication-method=normal >"$STATE/log/mariadb-install.log" 2>&1
  fi
  $SUDO nohup mariadbd --user=root --datadir="$STATE/mysql" --bind-address=127.0.0.1 \
    --port=3307 --socket="$STATE/mysqld.sock" --pid-file="$STATE/mariadb.pid" \
    >"$STATE/log/mariadb.log" 2>&1 &
  for _ in $(seq 30); do
    mariadb-admin --socket="$STATE/mysqld.sock" ping >/dev/null 2>&1 && break
    sleep 1
  done
  $SUDO mariadb --socket="$STATE/mysqld.sock" -u root -e "
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  say "mariadb started (127.0.0.1:3307)"
fi
if ! pid_alive "$STATE/slurmdbd.pid"; then
  $SUDO slurmdbd
  for _ in $(seq 30); do sacctmgr --noheader list cluster >/dev/null 2>&1 && break; sleep 1; done
  say "slurmdbd started"
fi
sacctmgr --noheader list cluster format=cluster | grep -qw sonoseg \
  || $SUDO sacctmgr --immediate add cluster sonoseg >/dev/null

pid_alive "$STATE/slurmctld.pid" || { $SUDO slurmctld; say "slurmctld started"; }
pid_alive "$STATE/slurmd.pid" || { $SUDO slurmd; say "slurmd started"; }

for _ in $(seq 60); do
  case "$(node_state)" in
    idle|mixed|allocated) say "node $NODE is $(node_state): $CPUS CPUs, $MEMORY MB (conf: $CONF)"; exit 0 ;;
    down*|drain*) $SUDO scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "slurm-up: the node did not become idle in 60 s; see $STATE/log/" >&2
sinfo >&2 || true
exit 1
