#!/usr/bin/env bash
# Start a one-node Slurm cluster (munged + slurmctld + slurmd) on 127.0.0.1.
#
# Usage: .ci/slurm/start.sh [STATE_DIR]
#   STATE_DIR  folder for all state, logs, PID files and the config
#              (default: a new `mktemp -d`). Printed as the last line of stdout.
#
# Needs root (apt-get, /etc/slurm). Idempotent: if a cluster started by this
# script is already up, it prints its folder and exits 0. Stop it with
# `.ci/slurm/stop.sh STATE_DIR`. Facts behind each setting:
# /work/shared/reference/ENVIRONMENT.md, "Slurm on one machine".
#
# Environment knobs (all optional):
#   VIEWFUSION_SLURM_FAKE_GPUS   fake GPUs on the node (default: nproc; 0 = none)
#   VIEWFUSION_SLURM_MEM_MARGIN  MiB kept back from RealMemory (default 10% of
#                                total, at least 512)
#   VIEWFUSION_SLURM_TIMEOUT     seconds to wait for the node (default 60)
set -euo pipefail

log() { echo "[slurm-start] $*" >&2; }
die() { echo "[slurm-start] ERROR: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, writes /etc/slurm)"
MARKER=.viewfusion-slurm-state
FAKE_GPUS=${VIEWFUSION_SLURM_FAKE_GPUS:-$(nproc)}
TIMEOUT=${VIEWFUSION_SLURM_TIMEOUT:-60}

# --- helpers -----------------------------------------------------------------
# pid_alive PIDFILE NAME: the PID in PIDFILE runs a program called NAME and is
# not a zombie (the name check guards against a recycled PID).
pid_alive() {
    local pid st
    [[ -s $1 ]] || return 1
    pid=$(tr -dc 0-9 <"$1")
    [[ -n $pid && -r /proc/$pid/stat ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
    st=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
    [[ -n $st && $st != Z && $st != X ]]
}
cluster_alive() {  # cluster_alive DIR
    [[ -f $1/$MARKER ]] && pid_alive "$1/munged.pid" munged &&
        pid_alive "$1/slurmctld.pid" slurmctld && pid_alive "$1/slurmd.pid" slurmd
}
# stop_leftovers DIR: stop what still runs of a dead or half-started cluster.
stop_leftovers() {
    local d pid stopped=0
    for d in slurmd slurmctld munged; do
        if pid_alive "$1/$d.pid" "$d"; then
            pid=$(tr -dc 0-9 <"$1/$d.pid")
            log "stopping leftover $d ($pid) of $1"; kill "$pid" 2>/dev/null || true
            stopped=1
        fi
    done
    if ((stopped)); then
        for _ in $(seq 50); do
            pid_alive "$1/slurmd.pid" slurmd || pid_alive "$1/slurmctld.pid" slurmctld ||
                pid_alive "$1/munged.pid" munged || break
            sleep 0.1
        done
    fi
}
node_state() { timeout 10 sinfo -h -N -n localhost -o %t 2>/dev/null | head -n1 || true; }
# The folder of the cluster this script started last, from the /etc symlink.
current_dir() {
    local t
    t=$(readlink /etc/slurm/slurm.conf 2>/dev/null) || return 0
    t=$(dirname "$t")
    [[ -f $t/$MARKER ]] && echo "$t" || true
}

# --- 1. packages -------------------------------------------------------------
need=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    log "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Do not let the packages' init scripts start system-wide daemons.
    policy=/usr/sbin/policy-rc.d; added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; added_policy=1
    fi
    if ! apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >&2; then
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >&2
    fi
    ((added_policy)) && rm -f "$policy"
fi

# --- 2. reuse a running cluster ---------------------------------------------
running=$(current_dir)
if [[ -n $running ]] && cluster_alive "$running"; then
    if [[ -n ${1:-} && $(realpath -m "$1") != "$running" ]]; then
        die "a cluster is already running from $running; stop it first: .ci/slurm/stop.sh $running"
    fi
    st=$(node_state)
    if [[ $st == idle || $st == mix || $st == alloc ]]; then
        log "cluster already running in $running"
        echo "$running"; exit 0
    fi
    log "cluster in $running does not answer (node state '${st:-none}'): restarting it"
fi
# A dead or half-dead cluster of ours: stop what is left of it (by its PIDs).
[[ -n $running ]] && stop_leftovers "$running"

# --- 3. state folder ---------------------------------------------------------
if [[ -n ${1:-} ]]; then
    S=$(realpath -m "$1"); mkdir -p "$S"
else
    S=$(mktemp -d "${TMPDIR:-/tmp}/viewfusion-slurm.XXXXXX")
fi
log "state folder: $S"
[[ -f $S/$MARKER ]] && stop_leftovers "$S"
chmod 755 "$S"   # munge clients (job steps) traverse it to reach the socket
mkdir -p "$S/ctld" "$S/spool" "$S/munge"
chmod 755 "$S/munge"
touch "$S/$MARKER"

# --- 4. munge ---------------------------------------------------------------
SYSKEY=/etc/munge/munge.key
if [[ ! -s $SYSKEY ]]; then
    log "creating munge key $SYSKEY"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --keyfile="$SYSKEY" --force
    else dd if=/dev/urandom of="$SYSKEY" bs=1 count=1024 status=none; fi
    chown munge:munge /etc/munge "$SYSKEY" 2>/dev/null || true; chmod 400 "$SYSKEY"
fi
# munged runs as root here and wants a root-owned key in a root-owned folder:
# use a private copy so the system's munge setup stays untouched.
KEY=$S/munge/munge.key
install -m 400 -o root -g root "$SYSKEY" "$KEY"
SOCK=$S/munge/munge.socket
munged --force --socket="$SOCK" --key-file="$KEY" --pid-file="$S/munged.pid" \
    --log-file="$S/munged.log" --seed-file="$S/munge/munged.seed" \
    || die "munged failed to start: $(tail -n 5 "$S/munged.log" 2>/dev/null)"

# --- 5. slurm.conf / gres.conf ---------------------------------------------
CPUS=$(nproc)
mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
mem=$((mem_kib / 1024))
# In a container the cgroup limit may be lower than MemTotal.
if [[ -r /sys/fs/cgroup/memory.max ]]; then
    cg=$(cat /sys/fs/cgroup/memory.max)
    [[ $cg =~ ^[0-9]+$ ]] && ((cg / 1048576 < mem)) && mem=$((cg / 1048576))
fi
margin=${VIEWFUSION_SLURM_MEM_MARGIN:-$((mem / 10 > 512 ? mem / 10 : 512))}
REALMEM=$((mem - margin))
((REALMEM >= 256)) || die "too little memory for a node (${mem} MiB total)"

gres_node=""; gres_types=""
if ((FAKE_GPUS > 0)); then
    # Fake GPUs so that jobs asking --gpus=N / --gres=gpu:N schedule on a
    # GPU-less node. gres needs one File per GPU (without it the node goes
    # INVAL); a character device avoids "not a valid character or block
    # device" errors in slurmd.log, a plain file works too.
    : >"$S/gres.conf.new"
    echo "AutoDetect=off" >>"$S/gres.conf.new"
    for ((i = 0; i < FAKE_GPUS; i++)); do
        f=$S/fakegpu$i
        [[ -e $f ]] || mknod -m 666 "$f" c 1 3 2>/dev/null || : >"$f"
        echo "NodeName=localhost Name=gpu File=$f" >>"$S/gres.conf.new"
    done
    mv "$S/gres.conf.new" "$S/gres.conf"
    gres_node=" Gres=gpu:$FAKE_GPUS"
    gres_types="GresTypes=gpu"
else
    : >"$S/gres.conf"
fi

cat >"$S/slurm.conf" <<CONF
# Written by .ci/slurm/start.sh: a one-node cluster on 127.0.0.1, state in $S
ClusterName=viewfusion
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: track processes by parent PID, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct fails, so Snakemake must use its squeue status mode ...
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# ... which needs finished jobs to stay visible to squeue for >= 3x the
# plugin's init-seconds-before-status-checks (default 40 s), or it falls back
# to sacct and waits forever.
MinJobAge=600
# Share the node between jobs by core and memory; without DefMemPerCPU a job
# that asks no memory takes all of it and jobs run one at a time.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# Trust the CPUs/RealMemory below even where slurmd detects more or less.
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
$gres_types
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REALMEM$gres_node State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

# --- 6. /etc/slurm symlinks (the job-step plugin drops SLURM_CONF) ---------
mkdir -p /etc/slurm "$S/etc-backup"
for f in slurm.conf gres.conf; do
    dst=/etc/slurm/$f
    if [[ -e $dst || -L $dst ]]; then
        tgt=$(readlink "$dst" 2>/dev/null || true)
        old=$(dirname "$tgt")
        if [[ -n $tgt && -f $old/$MARKER ]]; then
            rm -f "$dst"                      # ours, from an earlier run
            # That run may have moved the original aside: keep it for stop.sh.
            if [[ $old != "$S" && ( -e $old/etc-backup/$f || -L $old/etc-backup/$f ) ]]; then
                mv "$old/etc-backup/$f" "$S/etc-backup/$f"
            fi
        elif [[ ! -e $S/etc-backup/$f && ! -L $S/etc-backup/$f ]]; then
            mv "$dst" "$S/etc-backup/$f"      # someone else's: restored by stop.sh
            log "moved $dst to $S/etc-backup/$f"
        else
            mv "$dst" "$S/etc-backup/$f.$(date +%s)"
            log "moved $dst to $S/etc-backup/$f.$(date +%s) (not restored by stop.sh)"
        fi
    fi
    ln -s "$S/$f" "$dst"
done
unset SLURM_CONF

# --- 7. daemons -------------------------------------------------------------
slurmctld -i -f "$S/slurm.conf" || die "slurmctld failed: $(tail -n 20 "$S/slurmctld.log" 2>/dev/null)"
slurmd -N localhost -f "$S/slurm.conf" || die "slurmd failed: $(tail -n 20 "$S/slurmd.log" 2>/dev/null)"

t0=$SECONDS
while :; do
    st=$(node_state)
    case $st in
        idle) break ;;   # "idle*" = slurmd not responding yet
        down* | drain* | inval* | fail*)
            # ReturnToService=2 usually clears this once slurmd registers.
            scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
    esac
    if ((SECONDS - t0 > TIMEOUT)); then
        echo "[slurm-start] ERROR: node not idle after ${TIMEOUT}s (state: '${st:-none}')" >&2
        scontrol show node localhost >&2 || true
        for l in munged slurmctld slurmd; do
            echo "----- $S/$l.log (tail)" >&2; tail -n 30 "$S/$l.log" >&2 2>/dev/null || true
        done
        exit 1
    fi
    sleep 0.5
done
log "node idle after $((SECONDS - t0)) s: CPUs=$CPUS RealMemory=${REALMEM}MiB fake GPUs=$FAKE_GPUS"
echo "$S"
