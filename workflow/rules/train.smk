# One training job per experiment. The job keeps its rolling checkpoints/last.pt (and the
# snapshots) outside the declared outputs, so a failed, preempted or requeued job resumes from
# there instead of starting over; final.pt is declared and written once the step budget is done.
# It reruns when the resolved training config's fingerprint (a param) changes, whichever file of
# the `base:` chain changed; the job then moves the old run to superseded/ (never resumes it).
# training.nproc, training.nodes and training.max_hours are resources, not params: a process
# count, a node count or a time budget does not call for retraining.
#
# workflow/scripts/train.sh launches it: `torchrun --standalone` on one node (a workstation, or
# one Slurm node); with training.nodes > 1, srun starts one torchrun per node joined by a c10d
# rendezvous on the allocation's first node. On Slurm it also turns the profile's early
# time-limit signal into a checkpoint and requeues the job until final.pt or training.max_hours.

TRAIN = config["training"]


rule train:
    input:
        shards=get_experiment_shards,
    output:
        final="results/runs/{exp}/final.pt",
    wildcard_constraints:
        exp=exp_pattern(set(config["experiments"]) - set(imported_experiments())),
    params:
        run_dir="results/runs/{exp}",
        config=lambda wc: get_experiment(wc)["config"],
        overrides=get_train_overrides,
        config_sha256=get_train_config_sha256,
    threads: workflow.cores
    resources:
        # Portable resources; profiles map them to the cluster (gpu -> --gpus on Slurm).
        gpu=0,
        cpus_per_gpu=8,
        mem_mb=8000,
        runtime=60,
        nproc=TRAIN["nproc"],  # processes per node; common.smk refuses a profile whose GPUs differ
        nodes=TRAIN["nodes"],  # --nodes=N of the Slurm plugin (1: a single node, always)
        max_train_minutes=round(TRAIN["max_hours"] * 60),  # over all requeued allocations
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/train/{{exp}}.log",
    shell:
        "bash workflow/scripts/train.sh --run-dir {params.run_dir} --nodes {resources.nodes}"
        " --nproc {resources.nproc} --threads {threads}"
        " --max-minutes {resources.max_train_minutes}"
        " -- --config {params.config} --shards {input.shards} --out {params.run_dir}"
        " {params.overrides} --on-config-change restart >> {log} 2>&1"


# Published weights (experiments with `weights:`, e.g. config/eval/official_weights.yaml): the
# official best_model_all.pt converted unchanged, then sampled and scored like a trained run.
rule import_weights:
    input:
        weights=lambda wc: get_experiment(wc)["weights"],
    output:
        final="results/runs/{exp}/final.pt",
    wildcard_constraints:
        exp=exp_pattern(imported_experiments()),
    params:
        config=get_import_flags,
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/train/{{exp}}_import.log",
    shell:
        "viewfusion import-official {input.weights} {output.final} {params.config} > {log} 2>&1"
