"""The model folder: what `fewstep.load(PATH)` / `fewstep upscale --model PATH` read.

A folder holds `fewstep_model.json` (the configs as plain data, so the model is rebuilt without
this repository's config files; its `type` picks the loader) and the weight files it names, with
their sha256. Trainers write
their export folder with `write_model_folder`; `scripts/package_fewstep_small.py` builds the
bundled model with it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .errors import FewstepError
from .weights import sha256_file

MODEL_CARD = "fewstep_model.json"
# card "type" -> the loader of that kind of folder, by name (this module imports no model code)
FOLDER_LOADERS = {"resshift": "fewstep.resshift.models:load_folder", "sr3": "fewstep.skipdiff.sr3:load_folder",
                  "two-stage": "fewstep.resshift.two_stage:load_folder"}
# card "type" -> function(folder) -> the folder's ModelSpec (its options, checked by fewstep.registry.load)
FOLDER_SPECS = {"resshift": "fewstep.resshift.models:folder_spec", "sr3": "fewstep.skipdiff.models:folder_spec",
                "two-stage": "fewstep.resshift.models:two_stage_folder_spec"}


def resshift_card(*, name: str, scale: int, unet: dict, vq: dict, chain: dict, task: str = "sr",
                  unet_file: str = "unet.safetensors", vq_file: str = "autoencoder.safetensors", tile: int = 256,
                  overlap: int = 32, training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card of a ResShift model (what `fewstep.resshift.models.load_folder` reads)."""
    card = {"type": "resshift", "name": name, "task": task, "scale": int(scale), "unet": unet, "vq": vq,
            "chain": chain, "unet_file": unet_file, "vq_file": vq_file, "tile": int(tile), "overlap": int(overlap)}
    if training is not None:
        card["training"] = training
    return card


def read_card(folder: str | Path) -> dict[str, Any]:
    """The parsed `fewstep_model.json` of `folder` (one-line errors naming the file)."""
    path = Path(folder) / MODEL_CARD
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise FewstepError(f"{folder}: not a fewstep model folder (no {MODEL_CARD})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FewstepError(f"{path}: invalid model card ({e})") from None
    if not isinstance(card, dict):
        raise FewstepError(f"{path}: invalid model card (not a JSON object)")
    return card


def load_folder(folder: str | Path, **kwargs):
    """Build the model of a model folder with the loader of its card's `type`."""
    import importlib

    card = read_card(folder)
    kind = card.get("type")
    if kind not in FOLDER_LOADERS:
        raise FewstepError(f"{Path(folder) / MODEL_CARD}: model type {kind!r} is not one of {', '.join(FOLDER_LOADERS)}")
    module_name, func_name = FOLDER_LOADERS[kind].split(":")
    return getattr(importlib.import_module(module_name), func_name)(folder, **kwargs)


def write_model_folder(folder: str | Path, card: dict[str, Any], files: Sequence[str]) -> Path:
    """Write `folder/fewstep_model.json`: `card` plus the sha256 of each of `files` (which must be in
    `folder` already). Written to a temporary name and renamed, so a reader never sees half a card."""
    folder = Path(folder)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FewstepError(f"{folder}: cannot write {MODEL_CARD}, missing {', '.join(missing)}")
    card = {**card, "sha256": {f: sha256_file(folder / f) for f in files}}
    path = folder / MODEL_CARD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(path)
    return path
