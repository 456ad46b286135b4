# One training job per experiment. The job keeps its rolling checkpoints/last.pt (and the
# snapshots) outside the declared outputs, so a failed, preempted or requeued job resumes from
# there instead of starting over; final.pt is declared and written once the step budget is done.


rule train:
    input:
        shards=get_experiment_shards,
        config=lambda wc: get_experiment(wc)["config"],
    output:
        final="results/runs/{exp}/final.pt",
    params:
        run_dir="results/runs/{exp}",
        overrides=get_train_overrides,
        nproc=config["training"]["nproc"],
    threads: workflow.cores
    resources:
        # Portable resources; profiles map them to the cluster (gpu -> --gpus on Slurm).
        gpu=0,
        cpus_per_gpu=8,
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/train/{{exp}}.log",
    shell:
        "NPROC=$(( {resources.gpu} > 0 ? {resources.gpu} : {params.nproc} ));"
        " OMP_NUM_THREADS=$(( {threads} / NPROC > 0 ? {threads} / NPROC : 1 ))"
        " torchrun --standalone --nproc-per-node=$NPROC -m viewfusion.cli train"
        " --config {input.config} --shards {input.shards} --out {params.run_dir}"
        " {params.overrides} >> {log} 2>&1"
