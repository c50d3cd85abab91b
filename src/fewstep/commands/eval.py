"""`fewstep eval`: the command line over `fewstep.eval.run_eval`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import FewstepError


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

    from ..eval import make_datasets, run_eval

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
