#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for tests and demos.
#
#   scripts/slurm-single-node.sh up      install (if missing), configure and start munged, slurmctld, slurmd;
#                                        returns when the node is idle. Running it twice is fine.
#   scripts/slurm-single-node.sh down    stop the daemons that `up` started (and only those)
#   scripts/slurm-single-node.sh status  print what runs and what Slurm says; exit 0 only if the node is usable
#
# Needs root (it installs Debian packages and starts daemons). Works from a fresh clone in CI.
# The node advertises CPUs=8 on whatever cores the machine has (SlurmdParameters=config_overrides),
# so several 4-rank MPI jobs fit at once on a 2-core box. MpiDefault=pmi2 makes `srun` start real MPI
# ranks with pip's MPICH; JobCompType=jobcomp/filetxt lets `sacct -c` report finished jobs without
# slurmdbd. Debian 12 ships Slurm 22.05.8.
#
# Environment knobs (all optional):
#   SLURM_CPUS=8            CPUs the node advertises
#   SLURM_UP_TIMEOUT=90     seconds to wait for each daemon / the node to become ready
set -euo pipefail

CPUS="${SLURM_CPUS:-8}"
TIMEOUT="${SLURM_UP_TIMEOUT:-90}"
CONF=/etc/slurm/slurm.conf
STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/hpc-edge-slurm            # which daemons this script started (for `down`)
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
PACKAGES=(slurmctld slurmd slurm-client munge slurm-wlm-torque)

log() { printf 'slurm-single-node: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages and starts daemons)"
}

# pid_alive PIDFILE COMM: true if PIDFILE names a live process whose /proc/PID/comm is COMM.
# /run is not a tmpfs here, so a pidfile may survive its daemon and its pid may be reused.
pid_alive() {
    local pidfile=$1 comm=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]
}

# daemon_pid PIDFILE COMM: the pid of the running daemon COMM, from its pidfile or, when that is
# stale or missing (the daemon was started some other way), from the process table; empty if none.
daemon_pid() {
    local pidfile=$1 comm=$2
    if pid_alive "$pidfile" "$comm"; then
        tr -dc '0-9' <"$pidfile"
    else
        local dir
        for dir in /proc/[0-9]*; do
            if [[ $(cat "$dir/comm" 2>/dev/null) == "$comm" ]]; then
                echo "${dir#/proc/}"
                return
            fi
        done
    fi
}

# wait_for SECONDS COMMAND...: poll COMMAND once a second until it succeeds; false if time runs out.
wait_for() {
    local seconds=$1 deadline
    shift
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 1
    done
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || [[ -x /usr/sbin/munged ]] || missing+=(munge)
    command -v qsub >/dev/null || missing+=(slurm-wlm-torque)
    if ((${#missing[@]} == 0)); then
        return
    fi
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null \
        || die "apt-get install ${PACKAGES[*]} failed"
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 0700 /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key || die "mungekey --create failed"
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    if [[ -n $(daemon_pid "$MUNGE_PID" munged) ]]; then
        log "munged already running (pid $(daemon_pid "$MUNGE_PID" munged))"
    else
        log "starting munged"
        # --force: a stale socket left by a killed munged must not stop a fresh one.
        runuser -u munge -- /usr/sbin/munged --force || die "munged failed to start (see /var/log/munge/munged.log)"
        touch "$RUN_DIR/munged"
    fi
    wait_for "$TIMEOUT" bash -c 'munge -n | unmunge' \
        || die "munge does not answer after ${TIMEOUT}s (munge -n | unmunge fails; see /var/log/munge/munged.log)"
}

real_memory_mb() {
    local mem
    mem=$(slurmd -C 2>/dev/null | tr ' ' '\n' | sed -n 's/^RealMemory=//p' | head -n1)
    [[ $mem =~ ^[0-9]+$ ]] || mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    echo "$mem"
}

render_conf() {
    local host=$1 mem=$2
    cat <<EOF
# Written by hpc-edge scripts/slurm-single-node.sh: a one-node test cluster. Rewritten by 'up'.
ClusterName=hpcedge
SlurmctldHost=${host}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmi2
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=${STATE_DIR}/slurmctld
SlurmdSpoolDir=${STATE_DIR}/slurmd
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log
MinJobAge=300
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# write_conf: (re)write slurm.conf; prints "changed" if its content changed.
write_conf() {
    local host new
    host=$(hostname -s)
    new=$(render_conf "$host" "$(real_memory_mb)")
    install -d -m 0755 /etc/slurm "$STATE_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$LOG_DIR"
    if [[ -r $CONF ]] && [[ $(cat "$CONF") == "$new" ]]; then
        return
    fi
    log "writing $CONF (node ${host}, CPUs=${CPUS})"
    printf '%s\n' "$new" >"$CONF"
    echo changed
}

stop_daemon() {
    local name=$1 pidfile=$2 pid
    pid=$(daemon_pid "$pidfile" "$name")
    if [[ -z $pid ]]; then
        rm -f "$RUN_DIR/$name"
        return
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for 20 bash -c "! [[ -d /proc/$pid ]]"; then
        log "$name (pid $pid) ignored SIGTERM for 20s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN_DIR/$name"
}

node_state() { sinfo -h -o %T 2>/dev/null | head -n1 | tr -d '*~#!%$@^-' ; }

node_usable() {
    case "$(node_state)" in
        idle|mixed|allocated|completing) return 0 ;;
        *) return 1 ;;
    esac
}

start_slurm() {
    if [[ -n $(daemon_pid "$CTLD_PID" slurmctld) ]]; then
        log "slurmctld already running (pid $(daemon_pid "$CTLD_PID" slurmctld))"
    else
        log "starting slurmctld"
        slurmctld || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
        touch "$RUN_DIR/slurmctld"
    fi
    wait_for "$TIMEOUT" bash -c 'scontrol ping | grep -q "is UP"' \
        || die "slurmctld not UP after ${TIMEOUT}s (scontrol ping: $(scontrol ping 2>&1 | tr '\n' ' '); see $LOG_DIR/slurmctld.log)"
    if [[ -n $(daemon_pid "$SLURMD_PID" slurmd) ]]; then
        log "slurmd already running (pid $(daemon_pid "$SLURMD_PID" slurmd))"
    else
        log "starting slurmd"
        slurmd || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"
        touch "$RUN_DIR/slurmd"
    fi
    if ! wait_for "$TIMEOUT" node_usable; then
        # A node left DOWN/DRAIN by an earlier run (e.g. killed daemons) needs an explicit resume.
        log "node is '$(node_state)'; asking Slurm to resume it"
        scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
        wait_for 30 node_usable \
            || die "node not usable after ${TIMEOUT}s (sinfo: $(sinfo -h -o '%T %E' 2>&1 | tr '\n' ' '); see $LOG_DIR/slurmd.log)"
    fi
}

cmd_up() {
    need_root
    install -d -m 0755 "$RUN_DIR"
    install_packages
    start_munge
    if [[ -n $(write_conf) ]]; then
        # A running slurmctld/slurmd would keep the old configuration: restart them.
        stop_daemon slurmd "$SLURMD_PID"
        stop_daemon slurmctld "$CTLD_PID"
    fi
    start_slurm
    log "up: $(sinfo -h -o '%P %D %T cpus=%c' | head -n1) ($(sinfo -V))"
}

cmd_down() {
    need_root
    local name
    for name in slurmd slurmctld munged; do
        if [[ -e $RUN_DIR/$name ]]; then
            case $name in
                slurmd) stop_daemon slurmd "$SLURMD_PID" ;;
                slurmctld) stop_daemon slurmctld "$CTLD_PID" ;;
                munged) stop_daemon munged "$MUNGE_PID" ;;
            esac
        else
            log "$name was not started by this script; leaving it alone"
        fi
    done
}

cmd_status() {
    local ok=0 name pidfile pid
    for name in munged slurmctld slurmd; do
        case $name in
            munged) pidfile=$MUNGE_PID ;;
            slurmctld) pidfile=$CTLD_PID ;;
            slurmd) pidfile=$SLURMD_PID ;;
        esac
        pid=$(daemon_pid "$pidfile" "$name")
        if [[ -n $pid ]]; then
            log "$name: running (pid $pid)"
        else
            log "$name: not running"
            ok=1
        fi
    done
    if command -v sinfo >/dev/null; then
        log "sinfo: $(sinfo -h -o '%P %D %T cpus=%c' 2>&1 | tr '\n' ' ')"
        node_usable || ok=1
    else
        log "sinfo: not installed"
        ok=1
    fi
    return $ok
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
