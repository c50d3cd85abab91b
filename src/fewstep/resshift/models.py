"""Registry entries for the ResShift models (`fewstep.load(name)`)."""

from __future__ import annotations

from .presets import PRESETS

MODELS = [
    ("fewstep-x4", "fewstep.resshift.two_stage:load_two_stage",
     "fewstep's default x4: Real-ESRGAN x4plus, then a small ResShift refiner trained by fewstep; ships inside the package"),
    ("fewstep-small", "fewstep.resshift.models:load_small",
     "fewstep's own small ResShift (x4, 4 steps), trained on CPU on the shared photos; ships inside the package"),
] + [(name, "fewstep.resshift.models:load_preset", p["description"]) for name, p in PRESETS.items()]

SMALL_MODEL_DIR = ("data", "models", "fewstep-small")  # inside the fewstep package


def build_upscaler(unet, vq, chain_cfg: dict, *, scale: int, name: str, device="cpu", dtype="fp32",
                   tile: int | None = 256, overlap: int = 32, blend: str = "gaussian", tile_batch: int = 1,
                   needs_mask: bool = False, quiet: bool = True, steps: int | None = None):
    """Assemble networks + chain into a `ResShiftUpscaler` (optionally respaced to `steps`)."""
    import numpy as np

    from .chain import ResShiftChain
    from .pipeline import ResShiftPipeline, ResShiftUpscaler

    chain = ResShiftChain(**chain_cfg)
    if steps is not None and int(steps) != chain.steps:
        if not 1 <= int(steps) <= chain.steps:
            from ..errors import FewstepError

            raise FewstepError(f"{name}: steps must be between 1 and {chain.steps}, got {steps}")
        keep = np.unique(np.round(np.linspace(0, chain.steps - 1, int(steps))).astype(int))
        chain = chain.respaced(keep)
    pipe = ResShiftPipeline(unet.eval(), vq.eval(), chain, scale=scale).to(device)
    return ResShiftUpscaler(pipe, name=name, tile=tile, overlap=overlap, blend=blend, tile_batch=tile_batch,
                            dtype=dtype, needs_mask=needs_mask, quiet=quiet)


def load_preset(name: str, weights=None, device="cpu", dtype="fp32", tile: int | None = None,
                overlap: int | None = None, blend: str = "gaussian", tile_batch: int = 1, quiet: bool = True,
                download: bool = True, steps: int | None = None, **unused):
    """A released ResShift model. Weight files are looked up in `weights` (a folder), then the
    fewstep cache, then downloaded from the official release when online."""
    from ..weights import resolve
    from .checkpoint import load_unet, load_vq
    from .presets import VQ_FILES

    p = PRESETS[name]
    vq_file, vq_cfg = VQ_FILES[p["vq"]]
    # resolve both files before building a 118M-parameter network, so a missing file fails fast
    unet_path = resolve(p["unet_file"], weights, download=download, quiet=quiet)
    vq_path = resolve(vq_file, weights, download=download, quiet=quiet)
    unet, vq = load_unet(unet_path, p["unet"]), load_vq(vq_path, vq_cfg)
    return build_upscaler(unet, vq, p["chain"], scale=p["scale"], name=name, device=device, dtype=dtype,
                          tile=p["tile"] if tile is None else tile, overlap=p["overlap"] if overlap is None else overlap,
                          blend=blend, tile_batch=tile_batch, needs_mask=p["task"] == "inpaint", quiet=quiet, steps=steps)


MODEL_CARD = "fewstep_model.json"


def small_model_dir():
    """The folder of the bundled `fewstep-small` model (inside the installed package)."""
    from pathlib import Path

    return Path(__file__).resolve().parent.parent.joinpath(*SMALL_MODEL_DIR)


def load_small(name: str = "fewstep-small", weights=None, **kwargs):
    """The bundled `fewstep-small` (or the same model from `weights`, a folder holding its files)."""
    from pathlib import Path

    from ..errors import FewstepError

    folder = Path(weights) if weights is not None else small_model_dir()
    if not (folder / MODEL_CARD).is_file():
        where = "the installed package" if weights is None else str(folder)
        raise FewstepError(f"weights not found: {MODEL_CARD} of {name} is missing from {where} ({folder}); "
                           "reinstall fewstep, or retrain it: fewstep train configs/autoencoder_small.yaml, "
                           "then configs/resshift_small.yaml, then scripts/package_fewstep_small.py")
    return load_folder(folder, name=name, **kwargs)


def load_folder(folder, weights=None, device="cpu", dtype="fp32", tile: int | None = None, overlap: int | None = None,
                blend: str = "gaussian", tile_batch: int = 1, quiet: bool = True, steps: int | None = None,
                name: str | None = None, **unused):
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
    if card.get("type") == "two-stage":  # fewstep-x4 layout: Real-ESRGAN + ResShift refiner
        from .two_stage import load_two_stage

        return load_two_stage(name or card.get("name", folder.name), weights=folder, device=device, dtype=dtype,
                              tile=-1 if tile is None else tile, overlap=overlap, blend=blend, steps=steps, quiet=quiet, **unused)
    if card.get("type") != "resshift":
        raise FewstepError(f"{card_path}: model type {card.get('type')!r} is not 'resshift'")
    missing = [k for k in ("unet", "vq", "chain", "scale", "unet_file", "vq_file") if k not in card]
    if missing:
        raise FewstepError(f"{card_path}: missing field(s) {', '.join(missing)}")
    unet = load_unet(folder / card["unet_file"], card["unet"])
    vq = load_vq(folder / card["vq_file"], card["vq"])
    return build_upscaler(unet, vq, card["chain"], scale=card["scale"], name=name or card.get("name", folder.name),
                          device=device, dtype=dtype, tile=card.get("tile", 256) if tile is None else tile,
                          overlap=card.get("overlap", 32) if overlap is None else overlap, blend=blend,
                          tile_batch=tile_batch, needs_mask=card.get("task") == "inpaint", quiet=quiet, steps=steps)
