"""What `fewstep eval` writes: per_image.csv (appended as it goes), summary.csv / summary.md, the
perception-distortion plot and report.json (see `fewstep.eval` for the list)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from .datasets import Dataset, image_seed

BASE_COLUMNS = ["model", "dataset", "image", "seed", "nfe", "seconds", "lr_size"]
NOTE_COLUMN = "note"  # why a metric cell of the row is empty (e.g. "niqe: ... at least 192 px")


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
        if NOTE_COLUMN not in self.columns:
            self.columns.append(NOTE_COLUMN)
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
            row["counts"] = {}  # metric -> how many images the mean is over (empty cells are left out)
            for m in metric_names:
                vals = np.array([_num(r.get(m)) for r in sel], dtype=np.float64)
                row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
                row["counts"][m] = int(np.isfinite(vals).sum())
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
        partial = [f"`{r['model']}` {m.name}: over {r['counts'][m.name]} of {r['images']} images"
                   for r in rows for m in metric_objs if r.get("counts", {}).get(m.name, r["images"]) < r["images"]]
        if partial:
            lines += ["", "Means over fewer images (the other cells are empty; the `note` column of per_image.csv "
                      "says why): " + "; ".join(partial) + "."]
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
    plotted = False  # a metric that is empty on every image leaves nothing to label
    for i, ds in enumerate(dict.fromkeys(r["dataset"] for r in summary)):
        pts = [r for r in summary if r["dataset"] == ds and not math.isnan(r[x_name]) and not math.isnan(r[y_name])]
        if not pts:
            continue
        ax.scatter([r[x_name] for r in pts], [r[y_name] for r in pts], marker=markers[i % len(markers)], label=ds)
        plotted = True
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
    if plotted:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _write_report(path: Path, *, command, models, datasets, metrics, seed, steps, scale, device, limit, items,
                  model_info, failures, notes=()) -> None:
    import datetime
    import platform

    import numpy as np
    import torch

    from .. import __version__

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
        "notes": list(notes),
    }
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
