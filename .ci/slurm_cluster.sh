#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the SLURM tests (run as root).
#
#   bash .ci/slurm_cluster.sh up     # install (Debian packages) if needed, configure, start, wait for the node
#   bash .ci/slurm_cluster.sh down   # stop the daemons this script started
#
# Configuration: /etc/slurm/slurm.conf (where Debian's client tools read it), naming this host
# with its CPUs and memory (`slurmd -C`). State and logs: /var/spool/slurmctld, /var/spool/slurmd,
# /var/log/slurm. The daemons run in the background (no systemd); their pid files in
# /run/ci-slurm say which ones `down` stops.
set -euo pipefail

PIDS=/run/ci-slurm
LOGS=/var/log/slurm
CONF=/etc/slurm/slurm.conf

log() { echo "[slurm_cluster] $*" >&2; }

install() {
  local missing=()
  for bin in slurmctld slurmd sbatch munged; do
    command -v "$bin" >/dev/null || missing+=("$bin")
  done
  if ((${#missing[@]})); then
    log "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  fi
}

configure() {
  local host node
  host=$(hostname -s)
  # "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105": this machine as slurmd sees it.
  node=$(slurmd -C | head -n 1)
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS" "$PIDS"
  cat >"$CONF" <<EOF
# Written by .ci/slurm_cluster.sh: one node, this machine.
ClusterName=ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
InactiveLimit=0
KillWait=10
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating a munge key"
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
}

running() { [[ -f "$PIDS/$1.pid" ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

start() {
  if ! pgrep -x munged >/dev/null; then
    log "starting munged"
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$PIDS/munged.started"
  fi
  if ! running slurmctld; then
    log "starting slurmctld"
    slurmctld -c  # -c: a clean start, without the jobs of an earlier cluster
    touch "$PIDS/slurmctld.started"
  fi
  if ! running slurmd; then
    log "starting slurmd"
    slurmd
    touch "$PIDS/slurmd.started"
  fi
  for _ in $(seq 60); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qx 'idle'; then
      log "node $(hostname -s) is idle: $(sinfo -h -o '%P %D %c CPUs %m MB')"
      return 0
    fi
    sleep 1
  done
  log "the node never became idle; sinfo says: $(sinfo 2>&1 || true)"
  tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
  return 1
}

stop() {
  if running slurmctld || running slurmd; then
    scancel --full --quiet --user=root 2>/dev/null || true
  fi
  for daemon in slurmd slurmctld; do
    if [[ -f "$PIDS/$daemon.started" ]] && running "$daemon"; then
      log "stopping $daemon"
      kill "$(cat "$PIDS/$daemon.pid")"
      for _ in $(seq 20); do running "$daemon" || break; sleep 0.5; done
    fi
    rm -f "$PIDS/$daemon.started"
  done
  if [[ -f "$PIDS/munged.started" ]]; then
    log "stopping munged"
    kill "$(cat "$PIDS/munged.started")" 2>/dev/null || true
    rm -f "$PIDS/munged.started"
  fi
}

already_up() {
  command -v sinfo >/dev/null && [[ ! -f "$PIDS/slurmctld.started" ]] &&
    sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'
}

case "${1:-}" in
  up)
    if already_up; then
      log "a cluster is already up (not started by this script); using it as it is: $(sinfo -h -o '%P %D %t')"
      exit 0
    fi
    install; configure; start ;;
  down) stop ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
