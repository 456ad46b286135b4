#!/usr/bin/env bash
# A second Slurm cluster of two real nodes on this one machine, for multi-node tests: each slurmd
# runs in its own network namespace (own IP, own hostname) behind a bridge, so that srun, the
# job steps and torchrun's c10d rendezvous talk over a network between "nodes" as on a cluster.
#
#   .ci/slurm/two-nodes.sh start STATE_DIR   # needs the cluster of start.sh (its munged)
#   SLURM_CONF=STATE_DIR/slurm.conf sbatch -N 2 ...
#   .ci/slurm/two-nodes.sh stop STATE_DIR
#
# Layout: bridge vfbr0 10.77.0.1/24 in this namespace (slurmctld of cluster `vfpair` listens
# there, port 6827), namespaces vfn1/vfn2 with 10.77.0.11/.12 (slurmd port 6828, hostnames
# vfn1/vfn2 in their own UTS namespace, /etc/hosts from /etc/netns/<ns>/hosts bound over
# /etc/hosts in a private mount namespace). Partition `pair`, 1 CPU and 1500 MiB per node.
# Needs root, iproute2, unshare (util-linux) and the munged of .ci/slurm/start.sh (same key).
set -euo pipefail
log() { echo "[two-nodes] $*" >&2; }
die() { echo "[two-nodes] ERROR: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"
cmd=${1:-}; S=$(realpath -m "${2:-}")
[[ -n ${2:-} ]] || die "usage: two-nodes.sh start|stop STATE_DIR"
NODES=(vfn1 vfn2)
declare -A ADDR=([vfn1]=10.77.0.11 [vfn2]=10.77.0.12)

pid_of() { [[ -s $1 ]] && tr -dc 0-9 <"$1" || true; }
stop() {
    local p
    for n in "${NODES[@]}"; do
        p=$(pid_of "$S/slurmd-$n.pid")
        [[ -n $p && $(cat "/proc/$p/comm" 2>/dev/null) == slurmd ]] && kill "$p" 2>/dev/null || true
    done
    p=$(pid_of "$S/slurmctld.pid")
    [[ -n $p && $(cat "/proc/$p/comm" 2>/dev/null) == slurmctld ]] && kill "$p" 2>/dev/null || true
    sleep 1
    for n in "${NODES[@]}"; do
        ip netns del "$n" 2>/dev/null || true
        rm -rf "/etc/netns/$n"
        ip link del "v$n" 2>/dev/null || true
    done
    ip link del vfbr0 2>/dev/null || true
}
if [[ $cmd == stop ]]; then stop; log "stopped"; exit 0; fi
[[ $cmd == start ]] || die "usage: two-nodes.sh start|stop STATE_DIR"

main_conf=$(readlink -f /etc/slurm/slurm.conf 2>/dev/null) || die "no cluster of start.sh (/etc/slurm/slurm.conf)"
sock=$(grep -o 'AuthInfo=socket=[^ ]*' "$main_conf" | cut -d= -f3)
[[ -S $sock ]] || die "munge socket $sock of $main_conf is not there: start .ci/slurm/start.sh first"
stop
mkdir -p "$S/ctld" && chmod 755 "$S"

# --- network: a bridge and one namespace per node ---------------------------
ip link add vfbr0 type bridge
ip addr add 10.77.0.1/24 dev vfbr0
ip link set vfbr0 up
for n in "${NODES[@]}"; do
    ip netns add "$n"
    ip link add "v$n" type veth peer name vfeth0 netns "$n"
    ip link set "v$n" master vfbr0 up
    ip -n "$n" addr add "${ADDR[$n]}/24" dev vfeth0
    ip -n "$n" link set vfeth0 up
    ip -n "$n" link set lo up
    ip -n "$n" route add default via 10.77.0.1
    mkdir -p "/etc/netns/$n"
    {
        echo "127.0.0.1 localhost"
        for m in "${NODES[@]}"; do echo "${ADDR[$m]} $m"; done
        echo "10.77.0.1 vfctl"
    } >"/etc/netns/$n/hosts"
done

cat >"$S/slurm.conf" <<CONF
# Written by .ci/slurm/two-nodes.sh: two nodes in network namespaces, state in $S
ClusterName=vfpair
SlurmctldHost=$(hostname -s)(10.77.0.1)
SlurmctldPort=6827
SlurmdPort=6828
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/spool-%n
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd-%n.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=700
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=vfn1 NodeAddr=10.77.0.11 CPUs=1 RealMemory=1500 State=UNKNOWN
NodeName=vfn2 NodeAddr=10.77.0.12 CPUs=1 RealMemory=1500 State=UNKNOWN
PartitionName=pair Nodes=vfn1,vfn2 Default=YES MaxTime=INFINITE State=UP
CONF
: >"$S/gres.conf"

SLURM_CONF=$S/slurm.conf slurmctld -i -f "$S/slurm.conf" || die "slurmctld: $(tail -n 20 "$S/slurmctld.log")"
for n in "${NODES[@]}"; do
    mkdir -p "$S/spool-$n"
    # Own network (the namespace), own hostname (UTS) and /etc/hosts (a private mount namespace);
    # not `ip netns exec`, whose fresh /sys lacks the cgroup mount slurmd wants.
    nsenter --net="/run/netns/$n" unshare --uts --mount --propagation private sh -c \
        "hostname $n && mount --bind /etc/netns/$n/hosts /etc/hosts && exec slurmd -N $n -f '$S/slurm.conf'" ||
        die "slurmd $n: $(tail -n 20 "$S/slurmd-$n.log" 2>/dev/null)"
done
for _ in $(seq 60); do
    st=$(SLURM_CONF=$S/slurm.conf sinfo -h -o %t 2>/dev/null | sort -u | tr '\n' ' ')
    [[ $st == "idle " ]] && { log "two nodes idle (vfn1 10.77.0.11, vfn2 10.77.0.12)"; echo "$S"; exit 0; }
    sleep 1
done
SLURM_CONF=$S/slurm.conf sinfo -N >&2 || true
tail -n 20 "$S/slurmctld.log" "$S"/slurmd-*.log >&2 || true
die "nodes not idle after 60 s"
