"""Stage report (workflow/rules/report.smk): tables and figures from metrics and samples.
Never imports torch."""
