"""Where a run's numbers go: files in its work directory and Weights & Biases."""

from normlab.logging.run_files import RunFiles
from normlab.logging.wandb_run import WandbRun, flat_config

__all__ = ['RunFiles', 'WandbRun', 'flat_config']
