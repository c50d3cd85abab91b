"""`fewstep upscale INPUT... -o OUT`: restore files and folders with any registered model.

Per image: read (16-bit, gray, palette, CMYK, EXIF rotation handled; alpha kept), restore,
write. A bad file is reported on one line and skipped; an existing output is never overwritten
without --overwrite; the command ends with a summary and exits 1 if anything failed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

DEFAULT_MODEL = "fewstep-x4"  # bundled with the package: works offline out of the box


def _parse_tile(value: str | None) -> int | None | str:
    if value is None or value == "auto":
        return "auto"
    if value in ("0", "none", "off"):
        return None
    try:
        n = int(value)
    except ValueError:
        raise typer.BadParameter(f"--tile must be a number, 0/none or auto, got {value!r}") from None
    if n < 0:
        raise typer.BadParameter("--tile must be >= 0")
    return n


def upscale_command(
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder."),
    model: str = typer.Option(DEFAULT_MODEL, "-m", "--model", help="Model name (see `fewstep weights list`)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Folder holding the model's weight files."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Inpainting mask: one file, or a folder with masks named like the inputs (white = hole)."),
    tile: Optional[str] = typer.Option(None, "--tile", help="Tile size in input pixels; 0 = no tiling; default: the model's."),
    tile_overlap: Optional[int] = typer.Option(None, "--tile-overlap", help="Tile overlap in input pixels."),
    blend: Optional[str] = typer.Option(None, "--blend", help="Tile blending: gaussian (seamless, default) or uniform (official ResShift)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (respaced; default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same output."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16 (autocast)."),
    opt: List[str] = typer.Option([], "--opt", help="Model-specific option KEY=VALUE (repeatable), e.g. --opt upsample=bicubic."),
    suffix: str = typer.Option("", "--suffix", help="Appended to output names: NAME_SUFFIX.EXT."),
    ext: str = typer.Option("png", "--ext", help="Output format: png, jpg, webp, tif, or auto (same as input)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
) -> None:
    """Upscale / restore images."""
    from ..errors import FewstepError
    from ..imageio import list_images, output_path

    if dtype not in ("fp32", "bf16", "fp16"):
        raise FewstepError(f"--dtype must be fp32, bf16 or fp16, got {dtype!r}")
    if blend not in (None, "gaussian", "uniform"):
        raise FewstepError(f"--blend must be gaussian or uniform, got {blend!r}")
    ext_out = None if ext == "auto" else ext.lower().lstrip(".")
    files = list_images(inputs)
    if not files:
        raise FewstepError("no images found in " + ", ".join(map(str, inputs)))
    jobs = [(f, output_path(f, root, output, suffix=suffix, ext=ext_out)) for f, root in files]

    # refuse pending overwrites up front, so nothing is computed for them
    todo, failures = [], []
    for src, dst in jobs:
        if dst.exists() and not overwrite:
            failures.append((src, f"{dst}: output exists (pass --overwrite to replace it)"))
        else:
            todo.append((src, dst))
    for _, msg in failures:
        print(f"skipped: {msg}", file=sys.stderr)

    done = 0
    if todo:
        up = _load_model(model, weights, device, dtype, tile, tile_overlap, blend, steps, opt, quiet)
        done = _run(up, todo, mask, seed, overwrite, quiet, failures)
    n_fail = len(failures)
    print(f"{done} written, {n_fail} failed, {len(jobs)} total" + (f" -> {output}" if done else ""), file=sys.stderr)
    if n_fail:
        raise typer.Exit(code=1)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load_model(model, weights, device, dtype, tile, tile_overlap, blend, steps, opt, quiet):
    from .. import load
    from ..evaluate import parse_model_spec

    # only options the user gave are passed, so a model that lacks one says so instead of
    # silently ignoring it
    kwargs = dict(weights=weights, device=_resolve_device(device), dtype=dtype, quiet=quiet)
    if blend is not None:
        kwargs["blend"] = blend
    if opt:
        kwargs.update(parse_model_spec("model:" + ",".join(opt))[1])
    t = _parse_tile(tile)
    if t != "auto":
        kwargs["tile"] = t
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


def _run(up, todo, mask, seed, overwrite, quiet, failures) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..errors import FewstepError
    from ..imageio import read_image, resize_alpha, write_image

    done = 0
    for src, dst in tqdm(todo, desc="upscale", unit="img", disable=quiet):
        try:
            img = read_image(src)
            h, w = img.rgb.shape[:2]
            m = _mask_for(mask, src, (h, w))
            if up.needs_mask and m is None:
                raise FewstepError(f"{src}: model {up.name!r} needs a mask (--mask)")
            x = torch.from_numpy(np.ascontiguousarray(img.rgb)).permute(2, 0, 1)[None].float()
            mt = torch.from_numpy(m.astype(np.float32))[None, None] if m is not None else None
            t0 = time.perf_counter()
            y = up.restore(x, seed=seed, mask=mt)[0].permute(1, 2, 0).cpu().numpy()
            elapsed = time.perf_counter() - t0
            alpha = resize_alpha(img.alpha, y.shape[:2]) if img.alpha is not None else None
            write_image(dst, y, alpha=alpha, bit_depth=img.bit_depth if dst.suffix.lower() in (".png", ".tif", ".tiff") else 8,
                        overwrite=overwrite)
            done += 1
            if not quiet:
                tqdm.write(f"{src} -> {dst} ({elapsed:.1f} s)")
        except FewstepError as e:
            failures.append((src, str(e)))
            print(f"error: {e}", file=sys.stderr)
        except (RuntimeError, MemoryError) as e:  # out of memory and kernel errors: keep going
            hint = " (out of memory: try a smaller --tile)" if "memory" in str(e).lower() else ""
            msg = f"{src}: {e.__class__.__name__}: {str(e).splitlines()[0][:200]}{hint}"
            failures.append((src, msg))
            print(f"error: {msg}", file=sys.stderr)
    return done
