"""Registry entries for the ResShift models (`fewstep.load(name)`), and their factories."""

from __future__ import annotations

from ..model_folder import MODEL_CARD  # the one definition of the card name
from ..registry import ModelSpec, OptionSpec
from ..weights import WeightFile
from .presets import PRESETS, VQ_FILES


SMALL_MODEL_DIR = ("data", "models", "fewstep-small")  # inside the fewstep package

# The options every ResShift model takes (also model folders, `fewstep.load(FOLDER)`).
OPTIONS = (
    OptionSpec("steps", int, None, "sampling steps, respaced from the trained chain (None: all of them)", min=1),
    OptionSpec("tile", int, None, "tile size in LR pixels; 0: no tiling; None: the model's default_tile", min=0),
    OptionSpec("overlap", int, None, "tile overlap in LR pixels (None: the model's)", min=0),
    OptionSpec("blend", str, "gaussian", "tile blending: gaussian (seamless) or uniform (official ResShift)",
               choices=("gaussian", "uniform")),
    OptionSpec("tile_batch", int, 1, "tiles per network call (faster on GPUs, same output)", min=1),
)
DTYPES = ("fp32", "bf16", "fp16")
# Mean absolute difference (in [0, 1]) between two tile layouts of one image. Noise is seeded per
# tile position and overlaps are blended, so layouts differ only near seams: fewstep-small gives
# 0.0076 on the contract image cut into 16-pixel tiles with 8 overlap (tests/test_contract.py).
TILE_TOLERANCE = 0.02
_TASKS = {"realsr": "sr", "bicsr": "sr", "inpaint": "inpaint", "faceir": "face"}


def _small_file(name: str, sha256: str | None = None) -> WeightFile:
    return _bundled(SMALL_MODEL_DIR, name, sha256)


X4_DIR = ("data", "models", "fewstep-x4")  # inside the fewstep package
# fewstep-x4: the options of resshift/two_stage.py's load_two_stage
X4_OPTIONS = (
    OptionSpec("steps", int, None, "refiner steps, respaced from its chain (None: the card's, 1)", min=1),
    OptionSpec("tile", int, None, "stage-1 tile in LR pixels (the refiner tiles at 4x); 0: no tiling; None: 256", min=0),
    OptionSpec("overlap", int, None, "stage-1 tile overlap in LR pixels (None: 16)", min=0),
    OptionSpec("blend", str, "gaussian", "tile blending", choices=("gaussian", "uniform")),
    OptionSpec("strength", float, None, "share of the refiner's change applied at edges and in texture (1 = as "
               "trained; None: the card's, 0.05)", min=0.0),
    OptionSpec("flat_strength", float, None, "share applied where stage 1's output is flat (None: the card's, 0.75; "
               "-1: off, `strength` everywhere)", min=-1.0),
    OptionSpec("flat_tau", float, None, "local luma std (0-255) at which an area stops counting as flat (None: the "
               "card's, 3.0)", min=0.01),
    OptionSpec("grain", float, None, "fine texture added to the finest latent channels (None: the card's, 0)", min=0.0),
    OptionSpec("grain_from", int, None, "first latent channel that gets grain (None: the card's)", min=0),
    OptionSpec("stage1_only", bool, False, "Real-ESRGAN alone, without the refiner (for comparisons)"),
    OptionSpec("stage1_dtype", str, None, "stage-1 compute dtype (None: bf16 on CPUs with native bf16, else --dtype)",
               choices=("fp32", "bf16", "fp16")),
)


def _bundled(folder: tuple[str, ...], name: str, sha256: str | None = None) -> WeightFile:
    return WeightFile("/".join(folder + (name,)), sha256=sha256, bundled=True)


MODELS = (
    ModelSpec("fewstep-x4", "sr", 4,
              "fewstep's default x4: Real-ESRGAN x4plus, then a small ResShift refiner trained by fewstep; ships inside "
              "the package", "fewstep.resshift.two_stage:load_two_stage",
              weights=(_bundled(X4_DIR, MODEL_CARD),
                       _bundled(X4_DIR, "realesrgan_x4plus.safetensors",
                                "9bfdc76d6ecace3e7a31e4acd1f08a0c2a8f9806734b2810eeca504a36fce136"),
                       _bundled(X4_DIR, "refiner_unet.safetensors",
                                "b5a0f192064f66fcf806aee4f6b9995e531e813304c9afc5c2259ea5009fec4f"),
                       _bundled(X4_DIR, "refiner_autoencoder.safetensors",
                                "6ec89e6c653e5a7ff447c12e9c5dd23a6096ccb615f864017d72ba146fc6874a")),
              options=X4_OPTIONS, dtypes=DTYPES, default_tile=256, tile_tolerance=TILE_TOLERANCE),
    ModelSpec("fewstep-small", "sr", 4,
              "fewstep's own small ResShift (x4, 4 steps), trained on CPU on the shared photos; ships inside the package",
              "fewstep.resshift.models:load_small",
              weights=(_small_file(MODEL_CARD),
                       _small_file("unet.safetensors", "117d44c73ecdfd94068a8109967cee58a4351142eca4e9e726047086b6776ce3"),
                       _small_file("autoencoder.safetensors",
                                   "706c4b2bfbd03eb46bfc37f3fe49ad3635c78e30a386afa692065a8516f721da")),
              options=OPTIONS, dtypes=DTYPES, default_tile=256, tile_tolerance=TILE_TOLERANCE),
) + tuple(
    ModelSpec(name, _TASKS[p["task"]], p["scale"], p["description"], "fewstep.resshift.models:load_preset",
              weights=(p["unet_file"], VQ_FILES[p["vq"]][0]), options=OPTIONS, dtypes=DTYPES,
              default_tile=p["tile"], tile_tolerance=TILE_TOLERANCE)
    for name, p in PRESETS.items()
)


def folder_spec(folder) -> ModelSpec:
    """The spec of a model folder (`fewstep_model.json` + weight files), e.g. a trainer's export."""
    import json
    from pathlib import Path

    from ..errors import FewstepError

    card_path = Path(folder) / MODEL_CARD
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as e:
        raise FewstepError(f"{card_path}: invalid JSON ({e})") from None
    if not isinstance(card, dict):
        raise FewstepError(f"{card_path}: expected a JSON object")
    return ModelSpec(str(card.get("name", Path(folder).name)), _TASKS.get(card.get("task"), card.get("task", "sr")),
                     int(card.get("scale", 4)), f"model folder {folder}", "fewstep.resshift.models:load_folder",
                     options=OPTIONS, dtypes=DTYPES, default_tile=card.get("tile", 256), tile_tolerance=TILE_TOLERANCE)


def two_stage_folder_spec(folder) -> ModelSpec:
    """The spec of a two-stage model folder (fewstep-x4's layout, e.g. a rebuilt copy)."""
    from pathlib import Path

    from ..model_folder import read_card

    card = read_card(folder)
    return ModelSpec(str(card.get("name", Path(folder).name)), "sr", int(card.get("scale", 4)), f"model folder {folder}",
                     "fewstep.resshift.two_stage:load_folder", options=X4_OPTIONS, dtypes=DTYPES,
                     default_tile=card.get("tile", 256), tile_tolerance=TILE_TOLERANCE)


def build_upscaler(unet, vq, chain_cfg: dict, *, scale: int, name: str, device="cpu", dtype="fp32",
                   tile: int | None = 256, overlap: int = 32, blend: str = "gaussian", tile_batch: int = 1,
                   needs_mask: bool = False, quiet: bool = True, steps: int | None = None):
    """Assemble networks + chain into a `ResShiftUpscaler` (optionally respaced to `steps`)."""
    from .chain import ResShiftChain
    from .pipeline import ResShiftPipeline, ResShiftUpscaler

    chain = ResShiftChain(**chain_cfg).with_steps(steps, name=name)
    pipe = ResShiftPipeline(unet.eval(), vq.eval(), chain, scale=scale).to(device)
    return ResShiftUpscaler(pipe, name=name, tile=tile, overlap=overlap, blend=blend, tile_batch=tile_batch,
                            dtype=dtype, needs_mask=needs_mask, quiet=quiet)


def load_preset(name: str, weights=None, device="cpu", dtype="fp32", tile: int | None = None,
                overlap: int | None = None, blend: str = "gaussian", tile_batch: int = 1, quiet: bool = True,
                download: bool = True, steps: int | None = None):
    """A released ResShift model. Weight files are looked up in `weights` (a folder), then the
    fewstep cache, then downloaded from the official release when online."""
    from ..weights import resolve
    from .checkpoint import load_unet, load_vq

    p = PRESETS[name]
    vq_file, vq_cfg = VQ_FILES[p["vq"]]
    # resolve both files before building a 118M-parameter network, so a missing file fails fast
    unet_path = resolve(p["unet_file"], weights, download=download, quiet=quiet)
    vq_path = resolve(vq_file, weights, download=download, quiet=quiet)
    unet, vq = load_unet(unet_path, p["unet"]), load_vq(vq_path, vq_cfg)
    return build_upscaler(unet, vq, p["chain"], scale=p["scale"], name=name, device=device, dtype=dtype,
                          tile=p["tile"] if tile is None else tile, overlap=p["overlap"] if overlap is None else overlap,
                          blend=blend, tile_batch=tile_batch, needs_mask=p["task"] == "inpaint", quiet=quiet, steps=steps)


def small_model_dir():
    """The folder of the bundled `fewstep-small` model (inside the installed package)."""
    from pathlib import Path

    return Path(__file__).resolve().parent.parent.joinpath(*SMALL_MODEL_DIR)


def load_small(name: str = "fewstep-small", weights=None, **kwargs):
    """The bundled `fewstep-small` (or the same model from `weights`, a folder holding its files)."""
    from pathlib import Path

    folder = Path(weights) if weights is not None else small_model_dir()
    if not (folder / MODEL_CARD).is_file():
        from ..errors import WeightsNotFoundError

        how = "reinstall fewstep, or retrain it" if weights is None else "or drop --weights to use the bundled copy; retrain"
        raise WeightsNotFoundError(f"weights not found: put {MODEL_CARD} (and the files it names) in {folder} ({how}: "
                                   "fewstep train configs/autoencoder_small.yaml, then configs/resshift_small.yaml, "
                                   "then scripts/package_fewstep_small.py)")
    return load_folder(folder, name=name, **kwargs)


def load_folder(folder, weights=None, device="cpu", dtype="fp32", tile: int | None = None, overlap: int | None = None,
                blend: str = "gaussian", tile_batch: int = 1, quiet: bool = True, steps: int | None = None,
                name: str | None = None):
    """A ResShift model saved as a folder: `fewstep_model.json` (configs, as plain data) plus the
    UNet and VQ weight files it names (.safetensors or .pth, any released layout)."""
    import json
    from pathlib import Path

    from ..errors import FewstepError
    from .checkpoint import load_unet, load_vq

    folder = Path(folder)
    card_path = folder / MODEL_CARD
    try:
        card = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise FewstepError(f"{folder}: not a fewstep model folder (no {MODEL_CARD})") from None
    except json.JSONDecodeError as e:
        raise FewstepError(f"{card_path}: invalid JSON ({e})") from None
    if card.get("type") != "resshift":
        raise FewstepError(f"{card_path}: model type {card.get('type')!r} is not 'resshift'")
    missing = [k for k in ("unet", "vq", "chain", "scale", "unet_file", "vq_file") if k not in card]
    if missing:
        raise FewstepError(f"{card_path}: missing field(s) {', '.join(missing)}")
    from ..weights import verify_sha256

    for fname, digest in (card.get("sha256") or {}).items():  # recorded at export: checked on load
        if (folder / fname).is_file():
            verify_sha256(folder / fname, digest)
    unet = load_unet(folder / card["unet_file"], card["unet"])
    vq = load_vq(folder / card["vq_file"], card["vq"])
    return build_upscaler(unet, vq, card["chain"], scale=card["scale"], name=name or card.get("name", folder.name),
                          device=device, dtype=dtype, tile=card.get("tile", 256) if tile is None else tile,
                          overlap=card.get("overlap", 32) if overlap is None else overlap, blend=blend,
                          tile_batch=tile_batch, needs_mask=card.get("task") == "inpaint", quiet=quiet, steps=steps)
