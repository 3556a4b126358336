"""A fine-tuning job on disk: the data, the solver, the scripts and the run directory."""
