"""Ways of fine-tuning built on jobs and runs: sweeps and the demo."""
