"""Evaluation (`fewstep eval`): run models over datasets, score them with metrics, write tables and a plot.

Outputs in OUT_DIR:
  per_image.csv  one row per (model, dataset, image): seed, NFE, seconds (restore only), metrics.
                 Appended as it goes; a re-run skips rows already there (``resume``).
  summary.csv    one row per (model, dataset): number of images, NFE, s/img, mean of each metric.
  summary.md     the same as Markdown tables (one per dataset), metrics marked ↑/↓.
  pd_plot.png    perception-distortion plot: x = first full-reference metric (PSNR-Y), y = first
                 no-reference metric (NIQE), one labelled point per model per dataset.
  report.json    command line, versions, seeds, device, date.

A dataset is a folder of HR images plus a degradation preset (LR made on the fly, seeded per image
from (seed, file name)), or a prepared test set with `lr/` and `hr/` subfolders. Heavy imports
(torch, matplotlib, the models) happen inside functions so `fewstep --help` stays fast.

Modules: `datasets` (what is evaluated), `run` (the loop), `report` (the files); the command line is
`fewstep.commands.eval`.
"""

from __future__ import annotations

from .datasets import Dataset, image_seed, list_images, load_pair, make_datasets
from .run import EvalResult, parse_model_spec, run_eval

__all__ = ["Dataset", "EvalResult", "image_seed", "list_images", "load_pair", "make_datasets", "parse_model_spec",
           "run_eval"]
