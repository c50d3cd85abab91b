"""`fewstep weights`: list the models, where their files go, and fetch them when online."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def weights_command(
    action: str = typer.Argument("list", help="list | where | download"),
    name: Optional[str] = typer.Argument(None, help="Model name (for download)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Folder to look in / download into."),
) -> None:
    """List models and their weight files, show the cache folder, or download a model's files."""
    from ..errors import FewstepError
    from ..upscaler import available
    from ..weights import cache_dir, find_local, resolve

    files = _weight_files()
    if action == "where":
        print(weights or cache_dir())
    elif action == "list":
        for model, entry in sorted(available().items()):
            print(f"{model:20s} {entry.description}")
            if model == "fewstep-small":
                from ..resshift.models import small_model_dir

                print(f"    bundled {small_model_dir()}")
            for wf in files.get(model, []):
                local = find_local(wf, weights)
                print(f"    {'ok     ' if local else 'missing'} {wf.filename}" + (f"  ({local})" if local else f"  <- {wf.url}"))
    elif action == "download":
        if not name or name not in files:
            raise FewstepError(f"download needs a model with release files: {', '.join(sorted(files))}")
        for wf in files[name]:
            print(resolve(wf, weights))
    else:
        raise FewstepError(f"unknown action {action!r} (use list, where or download)")


def _weight_files() -> dict:
    """Model name -> its WeightFiles, for the models whose files are published."""
    from ..resshift.presets import PRESETS, VQ_FILES

    return {name: [p["unet_file"], VQ_FILES[p["vq"]][0]] for name, p in PRESETS.items()}
