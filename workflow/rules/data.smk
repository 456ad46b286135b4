# Dataset -> verified zip -> webdataset shards per shard set -> evaluation manifests.

if config["dataset"]["source"] == "synth":

    rule synth_dataset:
        output:
            zip=config["dataset"]["zip"],
        params:
            objects=config["dataset"]["synth_objects"],
            seed=config["dataset"]["synth_seed"],
        conda:
            "../envs/viewfusion.yaml"
        log:
            f"{LOGS}/data/synth.log",
        shell:
            "viewfusion data synth --objects {params.objects} --seed {params.seed}"
            " --out {output.zip} > {log} 2>&1"

else:

    rule download_dataset:
        output:
            zip=config["dataset"]["zip"],
        resources:
            # Not a param: a mirror serves the same zip (verified by its sha256), no rerun.
            url=config["dataset"]["url"],
        conda:
            "../envs/viewfusion.yaml"
        log:
            f"{LOGS}/data/download.log",
        shell:
            "viewfusion data download --url {resources.url} --out {output.zip} > {log} 2>&1"


rule verify_dataset:
    input:
        zip=config["dataset"]["zip"],
    output:
        report=f"results/data/dataset_check.json",
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/data/verify.log",
    shell:
        "viewfusion data verify --zip {input.zip} --report {output.report} > {log} 2>&1"


rule shard:
    input:
        zip=config["dataset"]["zip"],
        check="results/data/dataset_check.json",
    output:
        shards=directory("results/shards/{shard_set}"),
    params:
        shards=lambda wc: get_shard_set(wc)["shards"],
        percent=lambda wc: get_shard_set(wc)["percent"],
        withhold=lambda wc: " ".join(get_shard_set(wc)["withhold"]),
        lists=lambda wc: get_shard_set(wc)["lists"],
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/data/shard_{{shard_set}}.log",
    # Divisibility by training.nproc and the category names were checked when the DAG was built.
    shell:
        "viewfusion data shard --zip {input.zip} --out {output.shards} --shards {params.shards}"
        " --percent {params.percent} --lists {params.lists}"
        " $( [ -n '{params.withhold}' ] && echo --withhold {params.withhold} ) > {log} 2>&1"


rule eval_manifest:
    input:
        shards="results/shards/{shard_set}",
    output:
        manifest=WORKFLOW_MANIFESTS["official"],
    params:
        seed=EVAL["seed"],
        max_objects=(
            f"--max-objects {EVAL['max_objects']}" if EVAL["max_objects"] else ""
        ),
        targets=EVAL["targets_per_object"],
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/data/manifest_{{shard_set}}_{{split}}_v{{views}}.log",
    shell:
        "viewfusion data manifest --shards {input.shards} --split {wildcards.split}"
        " --views {wildcards.views} --seed {params.seed} {params.max_objects}"
        " --targets-per-object {params.targets} --out {output.manifest} > {log} 2>&1"


# Ground truth once per manifest (not per sample directory): one pack that every experiment,
# checkpoint and sampler scored on the manifest reads.
rule ground_truth:
    input:
        manifest="results/manifests/{shard_set}/{name}.json",
        shards="results/shards/{shard_set}",
    output:
        ground_truth="results/manifests/{shard_set}/{name}.gt.tar",
    wildcard_constraints:
        name=r"[^/]+",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/data/ground_truth_{{shard_set}}_{{name}}.log",
    shell:
        "viewfusion ground-truth --manifest {input.manifest} --shards {input.shards}"
        " --out {output.ground_truth} > {log} 2>&1"


# pixelNeRF's protocol: one listed source view per object, every other view a target.
rule eval_manifest_pixelnerf:
    input:
        shards="results/shards/{shard_set}",
        viewlist=get_viewlist,
    output:
        manifest=WORKFLOW_MANIFESTS["pixelnerf"],
    params:
        seed=EVAL["seed"],
        max_objects=(
            f"--max-objects {EVAL['max_objects']}" if EVAL["max_objects"] else ""
        ),
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/data/manifest_{{shard_set}}_{{split}}_pixelnerf_v{{views}}.log",
    shell:
        "viewfusion data manifest --shards {input.shards} --split {wildcards.split}"
        " --views {wildcards.views} --seed {params.seed} {params.max_objects}"
        " --viewlist {input.viewlist} --out {output.manifest} > {log} 2>&1"


# The synthetic data has no src_dvr.txt: a seeded list of the same kind.
rule viewlist:
    input:
        shards="results/shards/{shard_set}",
    output:
        viewlist="results/manifests/{shard_set}/viewlist-{split}.txt",
    params:
        seed=EVAL["seed"],
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/data/viewlist_{{shard_set}}_{{split}}.log",
    shell:
        "viewfusion data viewlist --shards {input.shards} --split {wildcards.split} --seed {params.seed}"
        " --out {output.viewlist} > {log} 2>&1"
