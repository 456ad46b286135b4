"""Stage evaluate (workflow/rules/evaluate.smk): sampling manifest targets, the sample store
and its provenance, ground truth, per-image metrics, PNG export, LPIPS backbones."""
