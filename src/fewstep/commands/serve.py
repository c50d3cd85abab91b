"""`fewstep serve`: start the local web page (see docs/serve.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default; 0.0.0.0 exposes the page)."),
    port: int = typer.Option(7860, "--port", help="Port (0 = any free port; the URL is printed)."),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Model selected and loaded at start (default: the CLI's, fewstep-x4)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Folder holding the models' weight files."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16 (autocast)."),
    max_upload_bytes: int = typer.Option(50_000_000, "--max-upload-bytes", help="Largest accepted upload, in bytes."),
    max_pixels: int = typer.Option(16_000_000, "--max-pixels", help="Largest accepted image, width*height (checked from the header)."),
    max_files: int = typer.Option(32, "--max-files", help="Most files in one job."),
) -> None:
    """Start a local web page to restore images (Ctrl-C stops it)."""
    from ..errors import FewstepError
    from ..serve import run
    from .upscale import validate_options

    device = validate_options(tile=None, tile_overlap=None, steps=None, blend=None, device=device, dtype=dtype)["device"]
    for flag, v in (("--max-upload-bytes", max_upload_bytes), ("--max-pixels", max_pixels), ("--max-files", max_files)):
        if v <= 0:
            raise FewstepError(f"{flag} must be positive, got {v}")
    if not 0 <= port <= 65535:
        raise FewstepError(f"--port must be in 0..65535, got {port}")
    run(host=host, port=port, model=model, weights=weights, device=device, dtype=dtype,
        max_bytes=max_upload_bytes, max_pixels=max_pixels, max_files=max_files)
