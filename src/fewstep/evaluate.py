"""`fewstep eval`: run models over datasets, score them with metrics, write tables and a plot.

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
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Sequence

import typer

from .errors import FewstepError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BASE_COLUMNS = ["model", "dataset", "image", "seed", "nfe", "seconds", "lr_size"]


# ---------------------------------------------------------------------------------------------
# Datasets


@dataclass(frozen=True)
class Dataset:
    """Either `hr_dir` + `degradation` (LR synthesised), or a prepared set (`lr_dir`, optional `hr_dir`)."""

    name: str
    hr_dir: Path | None = None
    lr_dir: Path | None = None
    degradation: str | None = None

    @property
    def prepared(self) -> bool:
        return self.lr_dir is not None


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def make_datasets(data_dirs: Sequence[str | Path], degradations: Sequence[str] = ()) -> list[Dataset]:
    """Turn `--data DIR` x `--degradation NAME` into datasets.

    A DIR with an `lr/` subfolder is a prepared test set (degradations do not apply to it); any
    other DIR is a folder of HR images, paired with each degradation preset.
    """
    out: list[Dataset] = []
    for d in data_dirs:
        folder = Path(d)
        if not folder.is_dir():
            raise FewstepError(f"--data {d}: not a folder")
        if (folder / "lr").is_dir():
            hr = folder / "hr"
            out.append(Dataset(name=folder.name, lr_dir=folder / "lr", hr_dir=hr if hr.is_dir() else None))
            continue
        if not degradations:
            raise FewstepError(f"--data {d}: a folder of HR images needs --degradation PRESET "
                               "(e.g. resshift-test or bicubic), or use a prepared test set with lr/ and hr/")
        if not list_images(folder):
            raise FewstepError(f"--data {d}: no images ({', '.join(IMAGE_EXTS)}) in the folder")
        for preset in degradations:
            out.append(Dataset(name=f"{folder.name}/{preset}", hr_dir=folder, degradation=preset))
    names = [ds.name for ds in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FewstepError(f"--data: two datasets are both named {dupes[0]!r}; give folders distinct names")
    return out


def _as_dataset(spec: Dataset | str | Path | tuple) -> list[Dataset]:
    if isinstance(spec, Dataset):
        return [spec]
    if isinstance(spec, tuple):
        folder, preset = spec
        return make_datasets([folder], [preset] if preset else [])
    return make_datasets([spec], [])


def image_seed(seed: int, image_name: str) -> int:
    """Per-image seed from (run seed, file name): stable across runs, machines and image order."""
    digest = hashlib.sha256(f"{int(seed)}/{image_name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _find_hr(hr_dir: Path | None, lr_path: Path) -> Path | None:
    if hr_dir is None:
        return None
    exact = hr_dir / lr_path.name
    if exact.is_file():
        return exact
    for p in sorted(hr_dir.glob(lr_path.stem + ".*")):
        if p.suffix.lower() in IMAGE_EXTS:
            return p
    return None


def load_pair(ds: Dataset, image: Path, *, scale: int, seed: int):
    """-> (lr uint8, hr uint8 or None, per-image seed)."""
    from .imageio import read_rgb8

    s = image_seed(seed, image.name)
    if ds.prepared:
        lr = read_rgb8(image)
        hr_path = _find_hr(ds.hr_dir, image)
        hr = read_rgb8(hr_path) if hr_path is not None else None
        if hr is not None and hr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
            raise FewstepError(f"{hr_path}: HR size {hr.shape[1]}x{hr.shape[0]} is not {scale}x the LR size "
                               f"{lr.shape[1]}x{lr.shape[0]}")
        return lr, hr, s
    hr = read_rgb8(image)
    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    if h == 0 or w == 0:
        raise FewstepError(f"{image}: {hr.shape[1]}x{hr.shape[0]} is smaller than the scale {scale}")
    hr = hr[:h, :w].copy()  # crop to a multiple of scale so that LR x scale == HR exactly
    return _degrade(hr, ds.degradation, scale, s), hr, s


def _degrade(hr, preset: str, scale: int, seed: int):
    from .degrade import degrade

    return degrade(hr, preset=preset, scale=scale, seed=seed)


# ---------------------------------------------------------------------------------------------
# Models and metrics


# KEY=VALUE parsing lives in fewstep.options (one home for the CLI, eval and the API)
from .options import parse_model_spec  # noqa: E402


def _load_model(spec, *, weights, device: str, steps: int | None):
    """spec: registry spec string, or an Upscaler instance (used as is). -> (label, upscaler)."""
    from .upscaler import Upscaler, load

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
    from .metrics import get_metric

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


# ---------------------------------------------------------------------------------------------
# per_image.csv


class _PerImageTable:
    """per_image.csv as rows keyed by (model, dataset, image); appends, rewrites when columns grow."""

    def __init__(self, path: Path, metric_names: list[str], resume: bool) -> None:
        self.path = path
        self.rows: dict[tuple[str, str, str], dict[str, str]] = {}
        self.columns = list(BASE_COLUMNS)
        if resume and path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                for col in reader.fieldnames or []:
                    if col not in self.columns:
                        self.columns.append(col)
                for row in reader:
                    self.rows[(row["model"], row["dataset"], row["image"])] = row
        new_cols = [m for m in metric_names if m not in self.columns]
        self.columns += new_cols
        self._rewrite()

    def done(self, key: tuple[str, str, str], metric_names: list[str]) -> bool:
        row = self.rows.get(key)
        return row is not None and all(m in row and row[m] is not None for m in metric_names)

    def add(self, row: dict[str, Any]) -> None:
        key = (row["model"], row["dataset"], row["image"])
        replacing = key in self.rows
        merged = {**self.rows.get(key, {}), **{k: _fmt(v) for k, v in row.items()}}
        self.rows[key] = merged
        if replacing:
            self._rewrite()
        else:
            with open(self.path, "a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, self.columns, restval="").writerow(merged)

    def _rewrite(self) -> None:
        part = self.path.with_name(self.path.name + ".part")
        with open(part, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, self.columns, restval="")
            writer.writeheader()
            for row in self.rows.values():
                writer.writerow({k: row.get(k, "") for k in self.columns})
        part.replace(self.path)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


# ---------------------------------------------------------------------------------------------
# the run


class EvalResult(list):
    """The summary rows (list of dicts), plus `.per_image` rows and `.failures` lines."""

    per_image: list[dict]
    failures: list[str]


def run_eval(models: Sequence, datasets: Sequence, metrics: Sequence, out_dir: str | Path, *, seed: int = 0,
             steps: int | None = None, device: str = "cpu", quiet: bool = False, resume: bool = True,
             scale: int = 4, weights: str | Path | None = None, limit: int | None = None,
             command: str | None = None) -> EvalResult:
    """Evaluate `models` (registry specs like "bicubic" / "fewstep-small:steps=4", or Upscalers) on
    `datasets` (Dataset objects, prepared test-set folders, or (hr_folder, preset) tuples) with
    `metrics` (names for fewstep.metrics.get_metric, or metric objects). Writes the files listed in
    the module docstring into `out_dir` and returns the summary rows; failed images are reported on
    stderr, skipped, and listed in `result.failures`.
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
    model_info: dict[str, dict[str, Any]] = {}

    def report(msg: str) -> None:
        failures.append(msg)
        tqdm.write(f"failed: {msg}", file=sys.stderr)

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
                    for m in metric_objs:
                        row[m.name] = _call_metric(m, res, hr, scale)
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
                  model_info=model_info, failures=failures)
    result = EvalResult(summary)
    result.per_image = per_image
    result.failures = failures
    return result


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(e, FewstepError) else f"{e.__class__.__name__}: {msg}"


def _summarise(per_image: list[dict], labels: list[str], dsets: list[Dataset], metric_names: list[str]) -> list[dict]:
    import numpy as np

    rows = []
    for lab in labels:
        for ds in dsets:
            sel = [r for r in per_image if r["model"] == lab and r["dataset"] == ds.name]
            if not sel:
                continue
            row: dict[str, Any] = {"model": lab, "dataset": ds.name, "images": len(sel),
                                   "nfe": sel[-1].get("nfe", ""),
                                   "s_per_img": float(np.mean([_num(r.get("seconds")) for r in sel]))}
            for m in metric_names:
                vals = np.array([_num(r.get(m)) for r in sel], dtype=np.float64)
                row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
            rows.append(row)
    return rows


def _write_summary_csv(path: Path, summary: list[dict], metric_names: list[str]) -> None:
    cols = ["model", "dataset", "images", "nfe", "s_per_img", *metric_names]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, cols)
        writer.writeheader()
        for row in summary:
            writer.writerow({k: _fmt(row[k]) for k in cols})


def _summary_markdown(summary: list[dict], dsets: list[Dataset], metric_objs: list) -> str:
    def arrow(m) -> str:
        return "↓" if m.lower_better else "↑"

    lines = ["# Evaluation summary", ""]
    for ds in dsets:
        rows = [r for r in summary if r["dataset"] == ds.name]
        if not rows:
            continue
        lines += [f"## {ds.name}", ""]
        head = ["model", *[f"{m.name} {arrow(m)}" for m in metric_objs], "NFE", "s/img", "images"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for r in rows:
            cells = [f"`{r['model']}`"]
            for m in metric_objs:
                v = r[m.name]
                cells.append("–" if math.isnan(v) else f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}")
            cells += [str(r["nfe"]), f"{r['s_per_img']:.3f}", str(r["images"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pick_axes(metric_objs: list) -> tuple[str | None, str | None]:
    ref = [m.name for m in metric_objs if m.needs_reference]
    nr = [m.name for m in metric_objs if not m.needs_reference]
    x = "psnr_y" if "psnr_y" in ref else (ref[0] if ref else None)
    y = "niqe" if "niqe" in nr else (nr[0] if nr else None)
    return x, y


def _pd_plot(path: Path, summary: list[dict], metric_objs: list) -> None:
    """Perception (y, no-reference) vs distortion (x, full-reference). With only one kind of
    metric, the other axis is seconds per image (quality vs speed) so a plot is always written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_name, y_name = _pick_axes(metric_objs)
    lower = {m.name: m.lower_better for m in metric_objs}
    if x_name is None and y_name is None:
        return
    if x_name is None:
        x_name = "s_per_img"
    if y_name is None:
        y_name = "s_per_img"
    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = "osD^v<>ph*"
    for i, ds in enumerate(dict.fromkeys(r["dataset"] for r in summary)):
        pts = [r for r in summary if r["dataset"] == ds and not math.isnan(r[x_name]) and not math.isnan(r[y_name])]
        if not pts:
            continue
        ax.scatter([r[x_name] for r in pts], [r[y_name] for r in pts], marker=markers[i % len(markers)], label=ds)
        for r in pts:
            ax.annotate(r["model"], (r[x_name], r[y_name]), textcoords="offset points", xytext=(4, 4), fontsize=7)

    def axis_label(name: str) -> str:
        if name == "s_per_img":
            return "seconds per image (lower is better)"
        return f"{name} ({'lower' if lower.get(name) else 'higher'} is better)"

    ax.set_xlabel(axis_label(x_name))
    ax.set_ylabel(axis_label(y_name))
    ax.margins(0.2)  # room for the point labels
    ax.set_title("perception vs distortion")
    ax.grid(True, alpha=0.3)
    if summary:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _write_report(path: Path, *, command, models, datasets, metrics, seed, steps, scale, device, limit, items,
                  model_info, failures) -> None:
    import datetime
    import platform

    import numpy as np
    import torch

    from . import __version__

    report = {
        "command": command if command is not None else " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"fewstep": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "seed": seed,
        "steps": steps,
        "scale": scale,
        "limit": limit,
        "models": models,
        "model_info": model_info,
        "metrics": metrics,
        "datasets": [{"name": ds.name, "hr_dir": str(ds.hr_dir) if ds.hr_dir else None,
                      "lr_dir": str(ds.lr_dir) if ds.lr_dir else None, "degradation": ds.degradation,
                      "images": {p.name: image_seed(seed, p.name) for p in items[ds.name]}}
                     for ds in datasets],
        "failures": failures,
    }
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# CLI


def eval_command(
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model name, optionally name:key=value,... (repeat).")],
    data: Annotated[list[Path], typer.Option("--data", "-d", help="HR image folder, or a test set with lr/ and hr/ (repeat).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for CSV/Markdown/plot/report.")],
    degradation: Annotated[list[str], typer.Option("--degradation", help="Degradation preset for HR folders (repeat).")] = [],  # noqa: B006
    metric: Annotated[list[str], typer.Option("--metric", help="Metric name (repeat); default psnr_y ssim_y niqe brisque edge_recovery.")] = [],  # noqa: B006
    scale: Annotated[int, typer.Option("--scale", help="Upscaling factor.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Base seed; per-image seeds derive from it and the file name.")] = 0,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps for diffusion models (default: their own).")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="Folder with weight files.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    limit: Annotated[int | None, typer.Option("--limit", help="Use only the first N images of each dataset.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Skip images already in per_image.csv.")] = True,
) -> None:
    """Evaluate models on datasets with metrics; write per-image/summary tables, a plot and a report."""
    import shlex

    metrics = list(metric) or ["psnr_y", "ssim_y", "niqe", "brisque", "edge_recovery"]
    datasets = make_datasets(data, degradation)
    if limit is not None and limit < 1:
        raise FewstepError(f"--limit must be >= 1, got {limit}")
    result = run_eval(list(model), datasets, metrics, out, seed=seed, steps=steps, device=device, quiet=quiet,
                      resume=resume, scale=scale, weights=weights, limit=limit,
                      command=shlex.join(["fewstep", *sys.argv[1:]]))
    if not quiet:
        print((Path(out) / "summary.md").read_text(encoding="utf-8"))
    if result.failures:
        print(f"error: {len(result.failures)} evaluation(s) failed (see the 'failed:' lines above); "
              f"results for the others are in {out}", file=sys.stderr)
        raise typer.Exit(1)
