"""The glimmer-run / glimmer-bench / glimmer-check front ends, deploy.toml, evaluation and
baselines."""
