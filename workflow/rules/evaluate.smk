# Sampling in chunks (one job each, Slurm runs them in parallel) -> per-image metrics.
# Changing only sampler, steps, view counts or metrics reruns these jobs and never training.
# evaluation.batch_size is a resource, not a param: images do not depend on it (only memory does). A rerun
# keeps the images whose fingerprint matches and regenerates the rest (viewfusion.evaluate.provenance).
#
# How many chunks a setting gets is sized from the rate model (viewfusion.workflow.chunking, SIZING in
# common.smk): long settings many, short ones one. A sampler whose whole sweep of view counts fits
# one job is *swept*: `sample_sweep` samples all its view counts in one job (one chunk each).
# Three rules with one command (common.smk: sample_command): `sample` and `sample_sweep` run the
# model's samplers (a GPU each on a cluster), `sample_nearest` the copy baseline (no network: a
# small CPU job). Separate rules because the Slurm plugin submits the ready jobs of one rule as one
# job array with the first job's resources.


rule sample:
    input:
        checkpoint=lambda wc: f"results/runs/{wc.exp}/final.pt",
        manifest=get_manifest,
        shards=get_eval_shards,
    output:
        chunk="results/samples/{exp}/{ckpt}/{sampler}/v{views}/chunks/{chunk}-of-{n}.json",
    wildcard_constraints:
        sampler=rf"(?!{tags_pattern([samplers.BASELINE, *SIZING.swept])})(?:{samplers.TAG_PATTERN})",
    params:
        command=get_sample_command,
    threads: 2
    resources:
        gpu=0,
        cpus_per_gpu=4,
        mem_mb=4000,
        runtime=DEFAULT_SAMPLE_MINUTES,
        batch_size=EVAL["batch_size"],
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/sample/{{exp}}_{{ckpt}}_{{sampler}}_v{{views}}_{{chunk}}-of-{{n}}.log",
    shell:
        "{params.command} > {log} 2>&1"


rule sample_sweep:
    input:
        checkpoint=lambda wc: f"results/runs/{wc.exp}/final.pt",
        manifests=get_sweep_manifests,
        shards=get_eval_shards,
    output:
        chunks=[f"results/samples/{{exp}}/{{ckpt}}/{{sampler}}/v{v}/chunks/1-of-1.json" for v in EVAL["view_counts"]],
    wildcard_constraints:
        sampler=tags_pattern(SIZING.swept),
    params:
        command=get_sweep_command,
    threads: 2
    resources:
        gpu=0,
        cpus_per_gpu=4,
        mem_mb=4000,
        runtime=DEFAULT_SAMPLE_MINUTES,
        batch_size=EVAL["batch_size"],
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/sample/{{exp}}_{{ckpt}}_{{sampler}}_sweep.log",
    shell:
        "({params.command}) > {log} 2>&1"


# The copy baseline: reads the checkpoint only for its fingerprint (the provenance of the
# chunk), so it stays per experiment. One chunk per setting: copies take seconds.
rule sample_nearest:
    input:
        checkpoint=lambda wc: f"results/runs/{wc.exp}/final.pt",
        manifest=get_manifest,
        shards=get_eval_shards,
    output:
        chunk="results/samples/{exp}/{ckpt}/{sampler}/v{views}/chunks/{chunk}-of-{n}.json",
    wildcard_constraints:
        sampler=samplers.BASELINE,
    params:
        command=get_sample_command,
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=30,
        batch_size=EVAL["batch_size"],
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/sample/{{exp}}_{{ckpt}}_{{sampler}}_v{{views}}_{{chunk}}-of-{{n}}.log",
    shell:
        "{params.command} > {log} 2>&1"


rule metrics:
    input:
        chunks=get_sample_chunks,
        manifest=get_manifest,
        ground_truth=get_ground_truth,
    output:
        metrics="results/samples/{exp}/{ckpt}/{sampler}/v{views}/metrics.parquet",
    params:
        generated="results/samples/{exp}/{ckpt}/{sampler}/v{views}",
        lpips=get_lpips_flags,
        protocol=EVAL["protocol"],
    threads: 2
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/metrics/{{exp}}_{{ckpt}}_{{sampler}}_v{{views}}.log",
    shell:
        "OMP_NUM_THREADS={threads} viewfusion metrics --generated {params.generated}"
        " --manifest {input.manifest} --ground-truth {input.ground_truth} --out {output.metrics} {params.lpips} --protocol {params.protocol} > {log} 2>&1"


rule sample_figures:
    input:
        checkpoint="results/runs/{exp}/final.pt",
        shards=get_experiment_shards,
    output:
        done="results/figure_samples/{exp}/done.json",
    params:
        out="results/figure_samples/{exp}",
        split=EVAL["split"],
        seed=EVAL["seed"],
        sampler=lambda wc: parse_sampler(sampler_tag(config["figures"]["sampler"])),
    threads: 2
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/sample_figures/{{exp}}.log",
    shell:
        "OMP_NUM_THREADS={threads} viewfusion sample-figures --checkpoint {input.checkpoint}"
        " --shards {input.shards} --split {params.split} --seed {params.seed} --experiment {wildcards.exp}"
        " {params.sampler} --out {params.out} > {log} 2>&1"
