"""The web page's one view of the model registry: which models exist, which can run here (weights
present) with the "put FILE in DIR" hint for the others, the options each declares with its
defaults, and loading a model once for reuse.

This file is the only place `fewstep serve` touches the registry (`fewstep.registry`: the typed
`ModelSpec`/`OptionSpec`, `missing_weights`, `load`); option values are checked by the same
`fewstep.options.coerce` as `--opt`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FewstepError



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


def list_models(weights: str | Path | None = None) -> list[ModelInfo]:
    from .. import registry

    out = []
    for name, spec in sorted(registry.models().items()):
        hints = registry.missing_weights(spec, weights)
        opts = tuple(Option(o.name, getattr(o.type, "__name__", str(o.type)), o.default, o.help, o.choices, o.min, o.max)
                     for o in spec.options)
        out.append(ModelInfo(name, spec.description, not hints, "; ".join(hints), opts, spec.task == "inpaint"))
    return out


# ----------------------------------------------------------------------------- public


def coerce_options(info: ModelInfo, values: dict) -> dict:
    """Page values (strings/numbers, "" = model default) -> typed load options, checked as `--opt`
    is; only the options the user set and changed are returned (like the CLI, so the model's
    defaults stay its own)."""
    from .. import registry
    from ..options import coerce

    spec = registry.get(info.name)
    valid = ", ".join(o.name for o in spec.options) or "none"
    out = {}
    for key, raw in (values or {}).items():
        opt = spec.option(key)
        if opt is None:
            raise FewstepError(f"model {info.name!r} has no option {key!r} (options: {valid})")
        if raw is None or raw == "":
            continue
        v = coerce(info.name, opt, raw, valid)
        if v != opt.default:
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
        from .. import registry

        return registry.load(name, **kwargs)
