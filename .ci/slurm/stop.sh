#!/usr/bin/env bash
# Stop the one-node Slurm cluster started by .ci/slurm/start.sh.
#
# Usage: .ci/slurm/stop.sh STATE_DIR [--purge]
#   Stops exactly the daemons whose PIDs start.sh recorded in STATE_DIR
#   (slurmd, slurmctld, munged; never by name), removes the /etc/slurm
#   symlinks that point into STATE_DIR and puts back whatever start.sh moved
#   aside. --purge also deletes STATE_DIR. Safe to run twice.
set -uo pipefail

log() { echo "[slurm-stop] $*" >&2; }
S=${1:-}
[[ -n $S ]] || { echo "usage: $0 STATE_DIR [--purge]" >&2; exit 2; }
S=$(realpath -m "$S")
[[ -f $S/.viewfusion-slurm-state ]] || { log "$S is not a folder made by start.sh"; exit 2; }

# alive PID: the process exists and is not a zombie (a zombie is as good as gone).
alive() {
    local st
    [[ -n $1 && -r /proc/$1/stat ]] || return 1
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [[ -n $st && $st != Z && $st != X ]]
}
# pid_of PIDFILE NAME: print the PID if it is alive and still runs NAME
# (a recycled PID belonging to another program is left alone).
pid_of() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(tr -dc 0-9 <"$1")
    alive "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] || return 1
    echo "$pid"
}

# Cancel jobs first so slurmd does not leave job steps behind.
if pid_of "$S/slurmctld.pid" slurmctld >/dev/null; then
    SLURM_CONF=$S/slurm.conf timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
fi

rc=0
for d in slurmd slurmctld munged; do   # reverse start order
    pid=$(pid_of "$S/$d.pid" "$d") || { log "$d not running"; continue; }
    kill -TERM "$pid"
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
        log "$d ($pid) ignored SIGTERM for 10 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    if alive "$pid"; then log "could not stop $d ($pid)"; rc=1
    else log "stopped $d ($pid)"; fi
done
# slurmctld forks a helper (slurmscriptd) that exits with it; slurmstepd
# processes of killed jobs exit once their job is gone. Report any leftover
# process whose command line names this state folder.
for p in /proc/[0-9]*; do
    [[ -r $p/cmdline && ${p#/proc/} != "$$" && ${p#/proc/} != "$PPID" ]] || continue
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$S/"; then
        log "note: process ${p#/proc/} still refers to $S: $(tr '\0' ' ' <"$p/cmdline")"
    fi
done

# /etc/slurm: drop our symlinks, restore what start.sh moved aside.
for f in slurm.conf gres.conf; do
    dst=/etc/slurm/$f
    if [[ -L $dst && $(readlink "$dst") == "$S/$f" ]]; then
        rm -f "$dst"
        if [[ -e $S/etc-backup/$f || -L $S/etc-backup/$f ]]; then
            mv "$S/etc-backup/$f" "$dst"; log "restored $dst"
        fi
    fi
done

if [[ ${2:-} == --purge ]]; then
    if ((rc == 0)); then rm -rf -- "$S"; log "removed $S"
    else log "kept $S (a daemon is still running)"; fi
fi
exit $rc
