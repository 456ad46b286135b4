"""Helpers of the Snakemake workflow: the cost plan, its config files and checkpoint probes."""
