#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests/test_slurm.py (`make slurm-test`).
#
#   tests/slurm/cluster.sh start    install (Debian's slurm-wlm 22.05 + munge) and start it,
#                                   unless a cluster already answers; prints "started" or "running"
#   tests/slurm/cluster.sh stop     stop the daemons that `start` started (nothing else)
#   tests/slurm/cluster.sh status   exit 0 when a cluster answers
#
# There is no systemd here, so the daemons (munged, slurmctld, slurmd) are started directly.
# The generated slurm.conf describes this machine (`slurmd -C`: cores, sockets, memory) with
# one partition, `local`. There is no slurmdbd (it needs a MySQL server): Snakemake's SLURM
# plugin then asks `squeue` for job states, which works as long as slurmctld remembers
# finished jobs for a while (MinJobAge below; the plugin wants at least 3x its first status
# delay). Needs root (or sudo) for apt-get and the daemons.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
STATE=/run/rld-slurm-test        # pid files of what `start` started; `stop` reads them
MARK="# Written by rld-offline tests/slurm/cluster.sh"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

log() { echo "cluster.sh: $*" >&2; }

answers() { timeout 10 scontrol ping 2>/dev/null | grep -q "is UP" && timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -q "^$MARK" "$CONF"; then
        log "$CONF exists and was not written by this script; not touching it (is a cluster configured but stopped?)"
        exit 1
    fi
    # `slurmd -C` prints this node as slurm.conf wants it (CPUs, sockets, cores, RealMemory).
    local node
    node=$(slurmd -C | head -1)
    $SUDO tee "$CONF" >/dev/null <<EOF
$MARK: a one-node test cluster.
ClusterName=rldtest
SlurmctldHost=$(hostname -s)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups without systemd here: track processes by parent, bind tasks to their cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Finished jobs stay visible to squeue for 10 minutes: the plugin's status queries need it.
MinJobAge=600
# scancel: SIGTERM, then SIGKILL after 5 s (the default 30 s only slows the test down).
KillWait=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
$node State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if answers; then
        echo running
        return
    fi
    install
    write_conf
    $SUDO mkdir -p "$STATE" /run/munge /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
    $SUDO chown munge:munge /run/munge
    $SUDO chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm
    [ -f /etc/munge/munge.key ] || $SUDO -u munge mungekey --create
    if ! pgrep -x munged >/dev/null; then
        $SUDO runuser -u munge -- munged --pid-file=/run/munge/munged.pid   # forks into the background
        $SUDO cp /run/munge/munged.pid "$STATE/munged.pid"
    fi
    # slurmctld/slurmd daemonize and write their pid files (SlurmctldPidFile/SlurmdPidFile above).
    # -c: a clean start, forgetting jobs of an earlier run of this test cluster.
    $SUDO slurmctld -c
    $SUDO slurmd
    for _ in $(seq 60); do
        if answers; then
            # A node that was down in an earlier life comes back on its own (ReturnToService=2),
            # but say it explicitly in case the state file remembered it as drained.
            $SUDO scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
            echo started
            return
        fi
        sleep 1
    done
    log "the cluster did not come up in 60 s; see /var/log/slurm/slurmctld.log and slurmd.log"
    exit 1
}

stop() {
    [ -d "$STATE" ] || { log "nothing to stop (no $STATE)"; return; }
    for daemon in slurmd slurmctld munged; do
        local pidfile="$STATE/$daemon.pid"
        [ -f "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            $SUDO kill "$pid"
            for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            log "stopped $daemon ($pid)"
        fi
        $SUDO rm -f "$pidfile"
    done
    $SUDO rmdir "$STATE" 2>/dev/null || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) answers ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
