# One training job per experiment. The job keeps its rolling checkpoints/last.pt (and the
# snapshots) outside the declared outputs, so a failed, preempted or requeued job resumes from
# there instead of starting over; final.pt is declared and written once the step budget is done.
# It reruns when the resolved training config's fingerprint (a param) changes, whichever file of
# the `base:` chain changed; the job then moves the old run to superseded/ (never resumes it).
# training.nproc is a resource, not a param: a process count does not call for retraining.


rule train:
    input:
        shards=get_experiment_shards,
    output:
        final="results/runs/{exp}/final.pt",
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
        nproc=config["training"]["nproc"],  # CPU processes when gpu is 0
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/train/{{exp}}.log",
    shell:
        "NPROC=$(( {resources.gpu} > 0 ? {resources.gpu} : {resources.nproc} ));"
        " OMP_NUM_THREADS=$(( {threads} / NPROC > 0 ? {threads} / NPROC : 1 ))"
        " torchrun --standalone --nproc-per-node=$NPROC -m viewfusion.cli train"
        " --config {params.config} --shards {input.shards} --out {params.run_dir}"
        " {params.overrides} --on-config-change restart >> {log} 2>&1"
