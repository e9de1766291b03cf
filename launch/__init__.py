"""Launchers: TPU VMs / queued resources (``python -m launch.tpu_vm``) and SLURM GPU clusters
(``python -m launch.slurm``). Each prints its exact commands with ``--dry-run``."""
