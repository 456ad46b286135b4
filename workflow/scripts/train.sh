#!/usr/bin/env bash
# The train rule's launcher (workflow/rules/train.smk): torchrun on a workstation, and on Slurm
# the same plus what a time-limited cluster needs.
#
#   train.sh --run-dir DIR --nodes N --nproc P --threads T --max-minutes M [--agents-per-node A]
#            -- <arguments of `viewfusion train`>
#
# Without Slurm (no SLURM_JOB_ID): `torchrun --standalone --nproc-per-node=P` (N must be 1).
# In a Slurm job:
# * N = 1: `torchrun --standalone` as above, on the job's node.
# * N > 1: `srun --overlap` starts one torchrun per node (A per node: a test hook, default 1),
#   joined by a c10d rendezvous on the first node of the allocation (its NodeAddr, so node
#   names need not resolve), port 29400 + job id % 1000, rendezvous id = the job id.
# * Early warning: profiles/slurm submits the job with `--signal=URG@<seconds>`. Slurm sends it
#   to every process of the job's steps, and URG is the one signal they all ignore by default:
#   the Snakemake of the job step (the executor plugin runs it under `srun`) would die of USR1,
#   and `--signal=B:USR1` reaches only the plugin's batch shell, which has no handler either.
#   This script traps URG and sends USR1 to the training processes (torchrun itself runs with
#   USR1 ignored), again every 10 s until they exit: `viewfusion train` finishes its step,
#   writes checkpoints/last.pt and exits 75.
# * Then, unless final.pt is there, it requeues its own job (`scontrol requeue`, the job was
#   submitted with --requeue): Slurm starts it again and `viewfusion train` resumes from
#   last.pt. Snakemake only sees the job pending again: no retry is spent.
# * Budget: every allocation appends `job restart start end seconds outcome` to
#   DIR/checkpoints/allocations.tsv; once their seconds reach M minutes (M > 0) it stops
#   requeueing and a later start refuses to train, with one line saying so. (An allocation
#   killed without a chance to write its line is not counted.)
# Exit status: that of torchrun; 75 when stopped by the warning but not requeued.
set -uo pipefail

die() { echo "train.sh: error: $*" >&2; exit 2; }
say() { echo "[train.sh $(date '+%F %T')] $*"; }

run_dir="" nodes=1 nproc=1 threads=1 max_minutes=0 agents=1
while (($#)); do
    case $1 in
        --run-dir) run_dir=$2; shift 2 ;;
        --nodes) nodes=$2; shift 2 ;;
        --nproc) nproc=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --max-minutes) max_minutes=$2; shift 2 ;;
        --agents-per-node) agents=$2; shift 2 ;;
        --) shift; break ;;
        *) die "unknown option $1 (train.sh --run-dir DIR --nodes N --nproc P --threads T --max-minutes M -- TRAIN-ARGS)" ;;
    esac
done
[[ -n $run_dir ]] || die "--run-dir is required"
for v in nodes nproc threads agents; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--${v/agents/agents-per-node} must be a whole number >= 1, got '${!v}'"
done
[[ $max_minutes =~ ^[0-9]+$ ]] || die "--max-minutes must be a whole number >= 0, got '$max_minutes'"
train=(-m viewfusion.cli train "$@")
export OMP_NUM_THREADS=$((threads / nproc > 0 ? threads / nproc : 1))

if [[ -z ${SLURM_JOB_ID:-} ]]; then
    ((nodes == 1)) || die "training.nodes $nodes needs a Slurm allocation (srun); run with profiles/slurm"
    exec torchrun --standalone --nproc-per-node="$nproc" "${train[@]}"
fi

# ---------------------------------------------------------------- Slurm
ledger=$run_dir/checkpoints/allocations.tsv
used_seconds() { [[ -s $ledger ]] && awk '$5 ~ /^[0-9]+$/ {s += $5} END {print s + 0}' "$ledger" || echo 0; }
budget_left() { ((max_minutes == 0 || $(used_seconds) + ${1:-0} < max_minutes * 60)); }
if ! budget_left 0; then
    echo "train.sh: error: the training budget (training.max_hours = $((max_minutes / 60)) h $((max_minutes % 60)) min)" \
        "is used up: $(used_seconds) s over the allocations in $ledger; raise training.max_hours and" \
        "rerun to continue from checkpoints/last.pt" >&2
    exit 75
fi

start=$(date +%s)
# How often Slurm restarted this job (the job step does not inherit SLURM_RESTART_COUNT).
restart=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
restart=${restart:-${SLURM_RESTART_COUNT:-0}}
# GPUs per node must equal the processes per node (training.nproc, or the rule's gpu resource).
if [[ -n ${CUDA_VISIBLE_DEVICES:-} && $CUDA_VISIBLE_DEVICES != NoDevFiles ]]; then
    IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
    ((${#gpus[@]} == nproc * agents)) || die "the allocation gives ${#gpus[@]} GPU(s) per node" \
        "($CUDA_VISIBLE_DEVICES) but $nproc training process(es) per node would start: make" \
        "profiles/slurm's GPUS_PER_NODE and the workflow's training.nproc agree"
fi

if ((nodes == 1 && agents == 1)); then
    say "job $SLURM_JOB_ID (restart $restart): torchrun --standalone, $nproc process(es), $OMP_NUM_THREADS thread(s) each"
    (trap '' USR1; exec torchrun --standalone --nproc-per-node="$nproc" "${train[@]}") &
    launcher=torchrun
else
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    addr=$(scontrol show node "$head" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
    [[ -n $addr ]] || die "no NodeAddr for node '$head' of allocation $SLURM_JOB_NODELIST"
    port=$((29400 + SLURM_JOB_ID % 1000))
    tasks=$((nodes * agents))
    say "job $SLURM_JOB_ID (restart $restart): srun $tasks torchrun agent(s) on $nodes node(s) x $nproc process(es)," \
        "c10d rendezvous at $addr:$port (node $head)"
    srun --overlap --nodes="$nodes" --ntasks="$tasks" --ntasks-per-node="$agents" \
        --cpus-per-task=$((threads / agents > 0 ? threads / agents : 1)) --kill-on-bad-exit=1 \
        bash -c 'trap "" USR1; exec "$@"' torchrun \
        torchrun --nnodes="$tasks" --nproc-per-node="$nproc" --rdzv-backend=c10d \
        --rdzv-endpoint="$addr:$port" --rdzv-id="$SLURM_JOB_ID" "${train[@]}" &
    launcher=srun
fi
pid=$!

# Send USR1 to the trainers: through srun (which forwards it to every task of its step, on every
# node) or to torchrun's children (its workers; torchrun ignores USR1).
signal_trainers() {
    if [[ $launcher == srun ]]; then
        kill -USR1 "$pid" 2>/dev/null
        return
    fi
    local stat line fields
    for stat in /proc/[0-9]*/stat; do
        { read -r line <"$stat"; } 2>/dev/null || continue
        read -r -a fields <<<"${line##*) }"  # after "(comm) ": state, ppid, ...
        [[ ${fields[1]:-} == "$pid" ]] && kill -USR1 "${line%% *}" 2>/dev/null
    done
}
warned=0 forwarder=""
on_warning() {
    ((warned)) && return
    warned=$(date +%s)
    say "time-limit warning (SIGURG): asking the trainers to checkpoint and stop (SIGUSR1)"
    signal_trainers
    (while sleep 10 && kill -0 "$pid" 2>/dev/null; do signal_trainers; done) &
    forwarder=$!
}
trap on_warning URG

while :; do
    wait "$pid"
    rc=$?
    kill -0 "$pid" 2>/dev/null || break  # else wait was cut short by the trap: wait again
done
[[ -n $forwarder ]] && kill "$forwarder" 2>/dev/null
end=$(date +%s)
if [[ -e $run_dir/final.pt ]] && ((rc == 0)); then outcome=finished
elif ((warned)) && [[ -e $run_dir/checkpoints/last.pt ]] && (($(stat -c %Y "$run_dir/checkpoints/last.pt") >= warned - 1)); then
    outcome=stopped
else outcome=failed; fi
mkdir -p "$(dirname "$ledger")"
printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$SLURM_JOB_ID" "$restart" "$start" "$end" $((end - start)) "$outcome" >>"$ledger"
say "allocation done: $outcome after $((end - start)) s (exit $rc); $(used_seconds) s of training allocations so far"

case $outcome in
    finished) exit 0 ;;
    failed) exit "$rc" ;;
esac
if ! budget_left 0; then
    echo "train.sh: error: stopped at the time limit and the training budget (training.max_hours) is used up" \
        "($(used_seconds) s in $ledger): not requeueing; raise training.max_hours and rerun to continue" >&2
    exit 75
fi
say "requeueing job $SLURM_JOB_ID: the next allocation resumes from $run_dir/checkpoints/last.pt"
if scontrol requeue "$SLURM_JOB_ID"; then
    sleep 600 & wait $!  # Slurm ends this allocation now; Snakemake sees the job pending again
    echo "train.sh: error: job $SLURM_JOB_ID was requeued but not stopped within 600 s; exiting 75" >&2
    exit 75
fi
echo "train.sh: error: scontrol requeue $SLURM_JOB_ID failed (a job submitted without --requeue?); exiting 75" \
    "so that a Snakemake retry resumes from last.pt" >&2
exit 75
