"""Offline-logit knowledge distillation with Refined Logit Distillation (RLD).

The library behind the `rld` stages: models (a registry by mdistiller name), data and
replayable views, losses, the Zarr logit store, and the training loop. It knows nothing
of Snakemake; `stages/` wraps it in click commands and the Snakefile calls those.
"""

__version__ = "0.1.0"
