# Per-image metrics -> the paper's tables and figures, captioned for `snakemake --report`.


rule tables:
    input:
        metrics=get_metric_files(),
    output:
        tables=report(
            directory("results/tables"),
            patterns=["{name}.csv"],
            caption="../report/tables.rst",
            category="Tables",
        ),
    conda:
        "../envs/viewfusion.yaml"
    params:
        speed=(
            f"--speed-view-count {EVAL['speed_view_count']}"
            if EVAL["speed_view_count"]
            else ""
        ),
        roles=get_role_flags,
    log:
        f"{LOGS}/tables.log",
    shell:
        "viewfusion tables --metrics {input.metrics} {params.speed} {params.roles} --out {output.tables}"
        " > {log} 2>&1"


rule figures:
    input:
        metrics=get_metric_files(),
        figure_samples=get_figure_samples(),
    output:
        figures=report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        samples=lambda wc, input: " ".join(
            os.path.dirname(f) for f in input.figure_samples
        ),
    conda:
        "../envs/viewfusion.yaml"
    log:
        f"{LOGS}/figures.log",
    shell:
        "viewfusion figures --metrics {input.metrics}"
        " $( [ -n '{params.samples}' ] && echo --figure-samples {params.samples} )"
        " --out {output.figures} > {log} 2>&1"
