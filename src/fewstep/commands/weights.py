"""`fewstep weights`: list the models, their files and options, show the cache folder, download."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def weights_command(
    action: str = typer.Argument("list", help="list | where | download"),
    name: Optional[str] = typer.Argument(None, help="Model name (for download; for list: show one model)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Folder to look in / download into."),
) -> None:
    """List models with their weight files and options, show the cache folder, or download a model's files."""
    from ..errors import FewstepError
    from ..registry import get, models
    from ..weights import cache_dir, find_local, resolve

    if action == "where":
        print(weights or cache_dir())
    elif action == "list":
        specs = [get(name)] if name else [s for _, s in sorted(models().items())]
        for spec in specs:
            print(f"{spec.name:20s} {spec.description}")
            for wf in spec.weights:
                local = find_local(wf, weights)
                kind = "bundled" if wf.bundled else ("ok     " if local else "missing")
                if local:
                    print(f"    {kind} {wf.name}  ({local})")
                else:
                    print(f"    {kind} {wf.name}  <- {wf.url or wf.hub_repo or 'no public source'}")
            if spec.options:
                print("    options: " + ", ".join(f"{o.name}={o.default}" for o in spec.options))
    elif action == "download":
        downloadable = sorted(n for n, s in models().items() if any(w.url or w.hub_repo for w in s.weights))
        if not name or name not in downloadable:
            raise FewstepError(f"download needs a model with published files: {', '.join(downloadable)}")
        for wf in get(name).weights:
            if not wf.bundled:
                print(resolve(wf, weights, into=weights))
    else:
        raise FewstepError(f"unknown action {action!r} (use list, where or download)")
