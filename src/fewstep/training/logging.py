"""Training logs: CSV files (one row per logged step) and TensorBoard scalars.

Two CSV files, ``train.csv`` and ``val.csv``, because validation metrics are logged at a different
rate from losses. Columns are the union of all keys seen; a new key rewrites the file with the wider
header. When a run resumes from step s, rows after s (written after the last checkpoint of a run
that then died) are dropped, so the log matches the restored state.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class CsvLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.columns: list[str] = []
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self.rows = [dict(r) for r in reader]

    def truncate_after(self, step: int) -> None:
        keep = [r for r in self.rows if int(float(r.get("step", 0))) <= step]
        if len(keep) != len(self.rows):
            self.rows = keep
            self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: r.get(k, "") for k in self.columns})
        tmp.replace(self.path)

    def write(self, row: dict[str, Any]) -> None:
        row = {k: _fmt(v) for k, v in row.items()}
        new = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new or not self.path.is_file():
            self.columns += new
            self._rewrite()
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow({k: row.get(k, "") for k in self.columns})


def _fmt(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return repr(v)  # full precision, so logs can be compared across runs
    return v


class RunLogger:
    """CSV + TensorBoard logger of one training run (only the main process writes)."""

    def __init__(self, out_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.train = CsvLog(self.out_dir / "train.csv") if enabled else None
        self.val = CsvLog(self.out_dir / "val.csv") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra; CSV logs still work
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(log_dir=str(self.out_dir / "tb"))

    def resume_at(self, step: int) -> None:
        if self.enabled:
            self.train.truncate_after(step)
            self.val.truncate_after(step)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        (self.train if kind == "train" else self.val).write({"step": step, **values})
        if self.tb is not None:
            for k, v in values.items():
                v = v.item() if hasattr(v, "item") else v
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
