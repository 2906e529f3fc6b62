"""sonoseg's Hydra plugins (Hydra loads launchers and sweepers only from ``hydra_plugins``):
the SLURM launcher that waits for every job, and the Optuna sweeper of shared studies."""
