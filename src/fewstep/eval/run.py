"""The evaluation run: load each model once, restore every image of every dataset, score the
outputs, and hand the rows to `report` (files are written as the run goes, so it can resume)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import FewstepError
from ..options import parse_model_spec  # KEY=VALUE parsing: one home for the CLI, eval and the API
from .datasets import _as_dataset, list_images, load_pair
from .report import NOTE_COLUMN, _pd_plot, _PerImageTable, _summarise, _summary_markdown, _write_report, _write_summary_csv


def _load_model(spec, *, weights, device: str, steps: int | None):
    """spec: registry spec string, or an Upscaler instance (used as is). -> (label, upscaler)."""
    from ..upscaler import Upscaler, load

    if isinstance(spec, Upscaler):
        return spec
    name, opts = parse_model_spec(spec)
    if steps is not None:
        opts.setdefault("steps", steps)
    try:
        return load(name, weights=weights, device=device, **opts)
    except FewstepError as e:
        raise FewstepError(f"--model {spec}: {e}") from None


def _model_label(spec) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "name", type(spec).__name__)


def _get_metric(spec, scale: int):
    """A metric name (from fewstep.metrics) or an object with .name/.lower_better/.needs_reference.

    Full-reference metrics get crop_border=scale (the BasicSR convention for SR evaluation)."""
    if not isinstance(spec, str):
        return spec
    from ..metrics import get_metric

    metric = get_metric(spec)
    if metric.needs_reference:
        try:
            metric = get_metric(spec, crop_border=scale)
        except FewstepError:  # a reference metric without a border option (e.g. LPIPS)
            pass
    return metric


def _call_metric(metric, out, hr, scale: int) -> float:
    if metric.needs_reference:
        if hr is None:
            return math.nan
        return float(metric(out, ref=hr))
    return float(metric(out))


class EvalResult(list):
    """The summary rows (list of dicts), plus `.per_image` rows, `.failures` lines (images that
    have no row) and `.notes` lines (metrics that could not be computed on an image that has a row)."""

    per_image: list[dict]
    failures: list[str]
    notes: list[str]


def run_eval(models: Sequence, datasets: Sequence, metrics: Sequence, out_dir: str | Path, *, seed: int = 0,
             steps: int | None = None, device: str = "cpu", quiet: bool = False, resume: bool = True,
             scale: int = 4, weights: str | Path | None = None, limit: int | None = None,
             command: str | None = None) -> EvalResult:
    """Evaluate `models` (registry specs like "bicubic" / "fewstep-small:steps=4", or Upscalers) on
    `datasets` (Dataset objects, prepared test-set folders, or (hr_folder, preset) tuples) with
    `metrics` (names for fewstep.metrics.get_metric, or metric objects). Writes the files listed in
    the module docstring into `out_dir` and returns the summary rows; failed images are reported on
    stderr, skipped, and listed in `result.failures`. A metric that cannot be computed on an image
    (NIQE on an image under 192 px, ...) leaves that cell empty, says why in the row's `note` and in
    `result.notes`, and keeps the row with its other metrics.
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    if not models:
        raise FewstepError("no --model given")
    if not metrics:
        raise FewstepError("no --metric given")
    dsets = [d for spec in datasets for d in _as_dataset(spec)]
    if not dsets:
        raise FewstepError("no --data given")
    metric_objs = [_get_metric(m, scale) for m in metrics]
    metric_names = [m.name for m in metric_objs]
    labels = [_model_label(m) for m in models]
    if len(set(labels)) != len(labels):
        raise FewstepError(f"--model: {labels} contains the same model twice")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = _PerImageTable(out / "per_image.csv", metric_names, resume)

    items: dict[str, list[Path]] = {}
    for ds in dsets:
        imgs = list_images(ds.lr_dir if ds.prepared else ds.hr_dir)
        items[ds.name] = imgs[:limit] if limit is not None else imgs
    pending = {(lab, ds.name, p.name): (spec, ds, p) for spec, lab in zip(models, labels) for ds in dsets
               for p in items[ds.name] if not table.done((lab, ds.name, p.name), metric_names)}
    failures: list[str] = []
    notes: list[str] = []
    model_info: dict[str, dict[str, Any]] = {}

    def report(msg: str) -> None:
        failures.append(msg)
        tqdm.write(f"failed: {msg}", file=sys.stderr)

    def note(msg: str) -> None:
        notes.append(msg)
        tqdm.write(f"note: {msg}", file=sys.stderr)

    pair_cache: dict[tuple[str, str], tuple] = {}
    with tqdm(total=len(pending), desc="eval", unit="img", disable=quiet) as bar:
        for spec, lab in zip(models, labels):
            todo = [v for k, v in pending.items() if k[0] == lab]
            if not todo:
                continue
            bar.set_postfix_str(lab)
            try:
                up = _load_model(spec, weights=weights, device=device, steps=steps)
                if up.scale != scale:
                    raise FewstepError(f"model scale is x{up.scale}, the evaluation uses --scale {scale}")
            except Exception as e:  # noqa: BLE001  one broken model must not stop the others
                report(f"{lab}: cannot load model ({_one_line(e)}); skipping its {len(todo)} images")
                bar.update(len(todo))
                continue
            model_info[lab] = {"name": up.name, "nfe": up.nfe, "scale": up.scale}
            for _spec, ds, path in todo:
                try:
                    key = (ds.name, path.name)
                    if key not in pair_cache:
                        pair_cache[key] = load_pair(ds, path, scale=scale, seed=seed)
                    lr, hr, s = pair_cache[key]
                    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float().div(255.0)
                    if str(device).startswith("cuda"):
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        y = up.restore(x, seed=s)
                    if str(device).startswith("cuda"):
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - t0
                    res = np.round(y[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0)
                    res = res.astype(np.uint8)
                    want = (lr.shape[0] * scale, lr.shape[1] * scale)
                    if res.shape[:2] != want:
                        raise FewstepError(f"output is {res.shape[1]}x{res.shape[0]}, expected {want[1]}x{want[0]}")
                    row = {"model": lab, "dataset": ds.name, "image": path.name, "seed": s, "nfe": up.nfe,
                           "seconds": seconds, "lr_size": f"{lr.shape[1]}x{lr.shape[0]}"}
                    cell_notes = []
                    for m in metric_objs:
                        try:
                            row[m.name] = _call_metric(m, res, hr, scale)
                        except KeyboardInterrupt:
                            raise
                        except Exception as e:  # noqa: BLE001  one metric must not lose the row
                            row[m.name] = math.nan
                            cell_notes.append(f"{m.name}: {_one_line(e)}")
                    row[NOTE_COLUMN] = "; ".join(cell_notes)
                    if cell_notes:
                        note(f"{lab} on {ds.name}/{path.name}: {row[NOTE_COLUMN]}")
                    table.add(row)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001  report the image, keep going
                    report(f"{lab} on {ds.name}/{path.name}: {_one_line(e)}")
                bar.update(1)
            del up
            if len(pair_cache) > 64:  # keep memory bounded on big sets (pairs are cheap to redo)
                pair_cache.clear()

    per_image = [table.rows[(lab, ds.name, p.name)] for lab in labels for ds in dsets for p in items[ds.name]
                 if (lab, ds.name, p.name) in table.rows]
    summary = _summarise(per_image, labels, dsets, metric_names)
    _write_summary_csv(out / "summary.csv", summary, metric_names)
    (out / "summary.md").write_text(_summary_markdown(summary, dsets, metric_objs), encoding="utf-8")
    _pd_plot(out / "pd_plot.png", summary, metric_objs)
    _write_report(out / "report.json", command=command, models=labels, datasets=dsets, metrics=metric_names,
                  seed=seed, steps=steps, scale=scale, device=device, limit=limit, items=items,
                  model_info=model_info, failures=failures, notes=notes)
    result = EvalResult(summary)
    result.per_image = per_image
    result.failures = failures
    result.notes = notes
    return result


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(e, FewstepError) else f"{e.__class__.__name__}: {msg}"
