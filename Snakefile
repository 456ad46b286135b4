# viewfusion: NMR ShapeNet -> shards -> training -> sampling -> metrics -> tables, figures, report.
#
#   snakemake --profile profiles/local     # synthetic dataset, CPU, minutes (config/config.yaml)
#   snakemake --profile profiles/slurm --configfile config/paper_workflow.yaml   # the paper, on a cluster
#
# Rules live in workflow/rules/; all Python helpers in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Run where Snakemake runs (a login node on Slurm: internet, little CPU), never as cluster jobs:
# the download needs the internet, which compute nodes often lack; verifying the zip, the tables
# and the figures are minutes of light work, not worth a place in the queue.
localrules:
    verify_dataset,
    # Converting published weights is a copy with checks: seconds, no GPU.
    import_weights,
    tables,
    figures,


if config["dataset"]["source"] == "download":

    localrules:
        download_dataset,


rule all:
    input:
        get_final_outputs(),
    default_target: True
