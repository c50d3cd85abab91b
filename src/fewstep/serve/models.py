"""The web page's one view of the model registry: which models exist, which can run here (weights
present) with the "put FILE in DIR" hint for the others, the options each declares with its
defaults, and loading a model once for reuse.

This file is the only place `fewstep serve` touches the registry. When `fewstep.registry` (its
typed `ModelSpec`/`OptionSpec`, `missing_weights`, `load`) is importable it is used; otherwise the
information is derived from what exists today: `fewstep.upscaler.available()`, the factories'
signatures, the ResShift presets' weight files and `fewstep.weights.find_local`.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FewstepError

from ..registry import DEFAULT_MODEL  # noqa: E402  (the CLI's default: bundled, works offline)


@dataclass(frozen=True)
class Option:
    """One control on the page (mirrors fewstep.registry.OptionSpec)."""

    name: str
    type: str                 # "int" | "float" | "str" | "bool"
    default: Any = None       # None: the model's own default (field left empty)
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type, "default": self.default, "help": self.help,
                "choices": list(self.choices) if self.choices else None, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    present: bool
    hint: str = ""            # "put FILE in DIR" lines when not present
    options: tuple[Option, ...] = field(default_factory=tuple)
    needs_mask: bool = False

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "present": self.present, "hint": self.hint,
                "options": [o.to_json() for o in self.options], "needs_mask": self.needs_mask}


def _registry():
    try:
        return importlib.import_module("fewstep.registry")
    except ModuleNotFoundError as e:
        if e.name == "fewstep.registry":
            return None
        raise


# ----------------------------------------------------------------------------- with fewstep.registry


def _from_registry(reg, weights) -> list[ModelInfo]:
    out = []
    for name, spec in sorted(reg.models().items()):
        hints = reg.missing_weights(spec, weights)
        opts = tuple(Option(o.name, getattr(o.type, "__name__", str(o.type)), o.default, o.help, o.choices, o.min, o.max)
                     for o in spec.options)
        out.append(ModelInfo(name, spec.description, not hints, "; ".join(hints), opts, spec.task == "inpaint"))
    return out


# ----------------------------------------------------------------------------- without (today)

# generic loader arguments that are not per-model options on the page
_NOT_OPTIONS = {"name", "weights", "device", "dtype", "quiet", "download", "tile_batch"}
_HELP = {"steps": "sampling steps (respaced)", "tile": "tile size in input pixels, 0 = whole image",
         "overlap": "tile overlap in input pixels", "blend": "tile blending", "scale": "upscaling factor"}
_CHOICES = {"blend": ("gaussian", "uniform")}


def _signature_options(factory) -> tuple[Option, ...]:
    params = dict(inspect.signature(factory).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and len(params) <= 3:
        # a thin wrapper (load_small(**kwargs)) -> the ResShift folder loader's options
        from ..resshift.models import load_folder

        params = dict(inspect.signature(load_folder).parameters)
    opts = []
    for p in params.values():
        if p.name in _NOT_OPTIONS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.default is p.empty:
            continue
        d = p.default
        ann = str(p.annotation)
        typ = type(d).__name__ if d is not None else ("int" if "int" in ann else "float" if "float" in ann else "str")
        if typ not in ("int", "float", "str", "bool"):
            continue
        opts.append(Option(p.name, typ, d, _HELP.get(p.name, ""), _CHOICES.get(p.name),
                           (1 if p.name in ("steps", "scale") else 0) if typ == "int" else None))
    return tuple(opts)


def _missing_files(name: str, weights) -> list[str]:
    from ..weights import cache_dir, find_local

    try:
        from ..resshift.presets import PRESETS, VQ_FILES
    except ModuleNotFoundError:
        return []
    if name not in PRESETS:
        return []
    p = PRESETS[name]
    folder = Path(weights) if weights else cache_dir()
    return [f"put {wf.filename} in {folder}" for wf in (p["unet_file"], VQ_FILES[p["vq"]][0])
            if find_local(wf, weights) is None]


def _from_available(weights) -> list[ModelInfo]:
    from ..upscaler import available

    out = []
    for name, entry in sorted(available().items()):
        module_name, func_name = entry.factory.split(":")
        try:
            factory = getattr(importlib.import_module(module_name), func_name)
        except ImportError as e:  # optional dependency of that model is not installed
            out.append(ModelInfo(name, entry.description, False, f"needs a package that is not installed ({e.name})"))
            continue
        hints = _missing_files(name, weights)
        out.append(ModelInfo(name, entry.description, not hints, "; ".join(hints), _signature_options(factory),
                             "inpaint" in name))
    return out


# ----------------------------------------------------------------------------- public


def list_models(weights: str | Path | None = None) -> list[ModelInfo]:
    reg = _registry()
    return _from_registry(reg, weights) if reg is not None else _from_available(weights)


def coerce_options(info: ModelInfo, values: dict) -> dict:
    """Page values (strings/numbers, "" = model default) -> typed load options; only the options
    the user set are returned (like the CLI, so the model's defaults stay its own)."""
    declared = {o.name: o for o in info.options}
    out = {}
    for key, raw in (values or {}).items():
        if key not in declared:
            raise FewstepError(f"model {info.name!r} has no option {key!r} (options: {', '.join(declared) or 'none'})")
        o = declared[key]
        if raw is None or raw == "":
            continue
        try:
            if o.type == "bool":
                v = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
            elif o.type == "int":
                v = int(raw)
            elif o.type == "float":
                v = float(raw)
            else:
                v = str(raw)
        except (TypeError, ValueError):
            raise FewstepError(f"option {key}: expected {o.type}, got {raw!r}") from None
        if o.choices and v not in o.choices:
            raise FewstepError(f"option {key}: must be one of {', '.join(map(str, o.choices))}, got {v!r}")
        if o.min is not None and v < o.min or o.max is not None and v > o.max:
            raise FewstepError(f"option {key}: must be in [{o.min}, {o.max}], got {v}")
        if v == o.default:
            continue
        out[key] = v
    return out


class ModelCache:
    """Keeps the last loaded model (name + load options) so repeated jobs reuse it; one model in
    memory at a time, since released ones are several hundred MB."""

    def __init__(self, weights=None, device: str = "cpu", dtype: str = "fp32"):
        self.weights, self.device, self.dtype = weights, device, dtype
        self._key = None
        self._model = None
        self._lock = threading.Lock()
        self.loads = 0  # how many times a model was actually built (for tests / the log)

    def get(self, name: str, options: dict):
        key = (name, tuple(sorted(options.items())))
        with self._lock:
            if key != self._key:
                self._model = None  # free the previous one before building the next
                self._model = self._load(name, options)
                self._key = key
                self.loads += 1
            return self._model

    def _load(self, name: str, options: dict):
        # the same keyword set `fewstep upscale` passes, so results are byte-identical
        kwargs = dict(weights=self.weights, device=self.device, dtype=self.dtype, quiet=True, **options)
        reg = _registry()
        if reg is not None:
            return reg.load(name, **kwargs)
        from .. import load

        return load(name, **kwargs)
