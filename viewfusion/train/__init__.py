"""Stage train (workflow/rules/train.smk): the training loop and its state, log, validation,
held-out loss, distributed set-up, submitit launch and run directories."""
