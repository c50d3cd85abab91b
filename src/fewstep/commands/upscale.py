"""`fewstep upscale INPUT... -o OUT`: restore files and folders with any registered model.

Every option is checked first (`validate_options`), then the inputs are planned and checked
(`fewstep.batch.plan_batch`: no output may collide with another or with an input), then the model is
loaded and the images run. Per image: read (16-bit, gray, palette, CMYK, EXIF rotation handled;
alpha kept), restore, write atomically. A bad file is reported on one line and skipped; an existing
output is skipped (resume) unless --overwrite; the command ends with a summary. Under torchrun /
accelerate each process does its own share of the plan (fewstep.distributed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..registry import DEFAULT_MODEL  # noqa: E402  (bundled with the package: works offline)


def _parse_tile(value: str | None) -> int | None | str:
    if value is None or value == "auto":
        return "auto"
    if value.strip().lower() in ("0", "none", "off"):
        return None
    try:
        n = int(value)
    except ValueError:
        from ..errors import FewstepError

        raise FewstepError(f"--tile must be a number, 0/none or auto, got {value!r}") from None
    if n < 0:
        from ..errors import FewstepError

        raise FewstepError(f"--tile must be >= 0, got {n}")
    return n


def validate_options(*, tile: str | None, tile_overlap: int | None, steps: int | None, blend: str | None,
                     device: str, dtype: str, local_rank: int = 0, world: int = 1) -> dict:
    """Every run option checked before any file is touched; one-line FewstepError on the first bad
    one. Returns the parsed values (tile, device)."""
    from ..distributed import check_dtype, resolve_device
    from ..errors import FewstepError

    if dtype not in ("fp32", "bf16", "fp16"):
        raise FewstepError(f"--dtype must be fp32, bf16 or fp16, got {dtype!r}")
    if blend not in (None, "gaussian", "uniform"):
        raise FewstepError(f"--blend must be gaussian or uniform, got {blend!r}")
    t = _parse_tile(tile)
    if isinstance(t, int) and t < MIN_TILE:
        raise FewstepError(f"--tile {t}: too small; use 0 (no tiling), auto, or at least {MIN_TILE} input pixels")
    if tile_overlap is not None:
        if tile_overlap < 0:
            raise FewstepError(f"--tile-overlap must be >= 0, got {tile_overlap}")
        if isinstance(t, int) and tile_overlap >= t:
            raise FewstepError(f"--tile-overlap {tile_overlap} must be smaller than --tile {t}")
    if steps is not None and steps < 1:
        raise FewstepError(f"--steps must be >= 1, got {steps}")
    dev = resolve_device(device, local_rank, world)
    warning = check_dtype(dtype, dev.split(":")[0])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return {"tile": t, "device": dev}


MIN_TILE = 16  # input pixels; smaller tiles are all overlap and padding


def upscale_command(
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (with several inputs: one sub-folder per input folder)."),
    model: str = typer.Option(DEFAULT_MODEL, "-m", "--model", help="Model name (see `fewstep weights list`)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Folder holding the model's weight files."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Inpainting mask: one file, or a folder with masks named like the inputs (white = hole)."),
    tile: Optional[str] = typer.Option(None, "--tile", help="Tile size in input pixels; 0 = no tiling; default: the model's."),
    tile_overlap: Optional[int] = typer.Option(None, "--tile-overlap", help="Tile overlap in input pixels."),
    blend: Optional[str] = typer.Option(None, "--blend", help="Tile blending: gaussian (seamless, default) or uniform (official ResShift)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (respaced; default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same output."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (under torchrun: cuda:LOCAL_RANK)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16 (autocast; fp16 is GPU only)."),
    opt: List[str] = typer.Option([], "--opt", help="Model-specific option KEY=VALUE (repeatable), e.g. --opt upsample=bicubic."),
    suffix: str = typer.Option("", "--suffix", help="Appended to output names: NAME_SUFFIX.EXT."),
    ext: str = typer.Option("png", "--ext", help="Output format: png, jpg, webp, tif, bmp, or auto (same as input)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files (default: skip them, i.e. resume)."),
    log: Optional[Path] = typer.Option(None, "--log", "--log-jsonl", help="Append one JSON line per image (input, output, status, seconds, seed, model). Under torchrun write --log-jsonl (torchrun takes --log for its own --log-dir)."),
    debug: bool = typer.Option(False, "--debug", help="Print full tracebacks of unexpected errors."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
) -> None:
    """Upscale / restore images.

    Exit status: 0 all done (existing outputs skipped), 1 some images failed, 2 bad argument or
    input (nothing computed), 3 internal error, 130 interrupted."""
    from ..batch import JsonLog, Progress, clean_stale_temp, plan_batch, report_internal, run_jobs
    from ..distributed import rank_info
    from ..errors import FewstepError

    rank, world, local_rank = rank_info()
    tag = f"[rank {rank}/{world}] " if world > 1 else ""
    progress = Progress()
    journal = None
    try:
        with _sigterm_as_interrupt():
            try:
                opts = validate_options(tile=tile, tile_overlap=tile_overlap, steps=steps, blend=blend, device=device,
                                        dtype=dtype, local_rank=local_rank, world=world)
                if mask is not None and not mask.exists():
                    raise FewstepError(f"--mask {mask}: no such file or folder")
                _check_model_name(model)
                plan = plan_batch(inputs, output, suffix=suffix, ext=ext)
                jobs = plan.share(rank, world)
                progress.total = len(jobs)
                clean_stale_temp(jobs)  # left by a killed run (only this rank's outputs)
                pending = sum(1 for j in jobs if overwrite or not j.dst.is_file())
                journal = JsonLog(log)
                process = None
                if pending:  # the model is loaded (and checked) before the first image
                    up = _load_model(model, weights, opts["device"], dtype, opts["tile"], tile_overlap, blend, steps,
                                     opt, quiet)
                    _check_model_tiling(up, tile, tile_overlap)
                    process = _processor(up, mask, seed, overwrite, quiet)
                run_jobs(process, jobs, overwrite=overwrite, progress=progress, log=journal, debug=debug,
                         record={"seed": seed, "model": model, "rank": rank}, quiet=quiet)
            except KeyboardInterrupt:
                print(f"{tag}interrupted: {progress.written} written, {progress.not_started} not started",
                      file=sys.stderr)
                raise typer.Exit(code=130) from None
            except (FewstepError, typer.Exit):
                raise
            except Exception as e:  # a bug of ours: one line, the traceback in a file
                print("error: " + report_internal(e, "upscale", debug=debug, log_path=[]), file=sys.stderr)
                raise typer.Exit(code=3) from None
    finally:
        if journal is not None:
            journal.close()
    parts = [f"{progress.written} written"]
    if progress.skipped:
        parts.append(f"{progress.skipped} skipped (output exists; --overwrite redoes them)")
    parts.append(f"{progress.failed} failed")
    print(tag + ", ".join(parts) + f", {len(jobs)} total" + (f" -> {plan.output}" if progress.written else ""),
          file=sys.stderr)
    if progress.failed:
        raise typer.Exit(code=1)


def _check_model_name(model: str) -> None:
    """An unknown --model is an error even when every output exists (and nothing is loaded)."""
    from ..errors import FewstepError
    from ..upscaler import available

    if (Path(model) / "fewstep_model.json").is_file():
        return
    names = available()
    if model not in names:
        hint = " (a folder, but without fewstep_model.json)" if Path(model).is_dir() else ""
        raise FewstepError(f"unknown model {model!r}{hint}; available: {', '.join(sorted(names))}")


class _sigterm_as_interrupt:
    """SIGTERM (what torchrun and job schedulers send) is handled like Ctrl-C, so the run reports
    where it stopped; only possible in the main thread."""

    def __enter__(self):
        import signal
        import threading

        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                raise KeyboardInterrupt
            self.old = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def _check_model_tiling(up, tile, tile_overlap) -> None:
    """The model's own default overlap may not fit a small --tile: say so before any image."""
    from ..errors import FewstepError

    t, o = getattr(up, "tile", None), getattr(up, "overlap", None)
    if isinstance(t, int) and t > 0 and isinstance(o, int) and o >= t:
        which = "--tile-overlap" if tile_overlap is not None else "the model's default overlap"
        raise FewstepError(f"--tile {t}: {which} {o} must be smaller than the tile; pass a smaller --tile-overlap")


def _load_model(model, weights, device, dtype, tile, tile_overlap, blend, steps, opt, quiet):
    from .. import load
    from ..options import parse_pairs

    # only options the user gave are passed, so a model that lacks one says so instead of
    # silently ignoring it
    kwargs = dict(weights=weights, device=device, dtype=dtype, quiet=quiet)
    if blend is not None:
        kwargs["blend"] = blend
    if opt:
        kwargs.update(parse_pairs(opt))
    if tile != "auto":  # already parsed by validate_options
        kwargs["tile"] = tile or 0  # 0: no tiling (None would mean "the model's default")
    if tile_overlap is not None:
        kwargs["overlap"] = tile_overlap
    if steps is not None:
        kwargs["steps"] = steps
    return load(model, **kwargs)


def _mask_for(mask: Path | None, src: Path, size: tuple[int, int]):
    if mask is None:
        return None
    from ..errors import FewstepError
    from ..imageio import IMAGE_EXTENSIONS, read_mask

    path = mask
    if mask.is_dir():
        candidates = [mask / (src.stem + "." + e) for e in IMAGE_EXTENSIONS] + [mask / src.name]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FewstepError(f"{src}: no mask named {src.stem}.* in {mask}")
        path = found[0]
    return read_mask(path, size)


def _processor(up, mask, seed, overwrite, quiet):
    """The per-image work of a batch: read, restore, write `job.dst` (atomically)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..errors import FewstepError
    from ..imageio import read_image, resize_alpha, write_image

    def process(job) -> None:
        img = read_image(job.src)
        h, w = img.rgb.shape[:2]
        m = _mask_for(mask, job.src, (h, w))
        if up.needs_mask and m is None:
            raise FewstepError(f"{job.src}: model {up.name!r} needs a mask (--mask)")
        x = torch.from_numpy(np.ascontiguousarray(img.rgb)).permute(2, 0, 1)[None].float()
        mt = torch.from_numpy(m.astype(np.float32))[None, None] if m is not None else None
        t0 = time.perf_counter()
        with torch.no_grad():
            y = up.restore(x, seed=seed, mask=mt)[0].permute(1, 2, 0).cpu().numpy()
        elapsed = time.perf_counter() - t0
        alpha = resize_alpha(img.alpha, y.shape[:2]) if img.alpha is not None else None
        bits = img.bit_depth if job.dst.suffix.lower() in (".png", ".tif", ".tiff") else 8
        write_image(job.dst, y, alpha=alpha, bit_depth=bits, overwrite=overwrite)
        if not quiet:
            tqdm.write(f"{job.src} -> {job.dst} ({elapsed:.1f} s)")

    return process
