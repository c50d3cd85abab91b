"""Smoke runs of the shipped small configs (autoencoder, then ResShift on its export), with tiny
overrides so they take seconds, plus the `fewstep train` dispatch and the recipe configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fewstep.errors import FewstepError
from fewstep.training import load_config
from fewstep.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PHOTOS = Path(__file__).resolve().parent / "fixtures" / "photos"
# the shipped configs name ../shared's photos; the tests use the copies shipped beside them
PHOTO_DIRS = [f"data.hr_dir={PHOTOS / 'train'}", f"val.hr_dir={PHOTOS / 'eval'}"]




pytestmark = pytest.mark.usefixtures("one_thread")


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


TINY_PATCH = ["autoencoder.params.channels=[16,8]", "autoencoder.params.blocks=[1,1]"]
TINY_VQ_PARAMS = ("{embed_dim: 3, n_embed: 64, ddconfig: {double_z: false, z_channels: 3, resolution: 64, in_channels: 3,"
                  " out_ch: 3, ch: 32, ch_mult: [1, 2, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}}")


@pytest.mark.parametrize("kind", ["patch", "vq"])
def test_small_configs_smoke_autoencoder_then_resshift(tmp_path, kind):
    """The shipped small configs (patch autoencoder) and the official VQ layout, shrunk to seconds."""
    from fewstep.resshift import autoencoder_train, train as resshift_train

    if kind == "patch":
        ae_over = TINY_PATCH + ["autoencoder.pca_patches=4000"]
        rs_ae = ["autoencoder.params.channels=[16,8]", "autoencoder.params.blocks=[1,1]"]
    else:
        ae_over = ["autoencoder.kind=vq", f"autoencoder.params={TINY_VQ_PARAMS}", "loss.codebook_weight=1.0"]
        rs_ae = [f"autoencoder.params={TINY_VQ_PARAMS}", "model.in_channels=3", "model.out_channels=3"]
    ae_dir = tmp_path / "ae"
    ae_cfg = load_config(CONFIGS / "autoencoder_small.yaml", [
        f"out_dir={ae_dir}", *ae_over, *PHOTO_DIRS, "data.crop=32", "data.length=8", "val.crop=32", "val.num_images=1",
        "loss.disc_start=10", "loss.disc_channels=32", "loss.disc_layers=2", "loss.lpips_weight=0",
        "train.steps=20", "train.batch_size=2", "train.warmup=5", "train.log_every=5", "train.val_every=null",
        "train.lr=1e-4", "train.eta_min=1e-5",
        "train.ckpt_every=10", "train.num_workers=0", "train.tensorboard=true"])
    res = autoencoder_train.train(ae_cfg, quiet=True)
    assert res["step"] == 20
    rows = _csv(ae_dir / "train.csv")
    assert [r["step"] for r in rows] == ["5", "10", "15", "20"]
    # the discriminator starts at step 10: no discriminator loss is logged before, one after
    assert rows[0]["loss_disc"] == "" and rows[-1]["loss_disc"] != ""
    assert all(math.isfinite(float(r["loss_ae"])) for r in rows)
    assert float(rows[-1]["lr"]) == pytest.approx(1e-5 + (1e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 14 / 15)), rel=1e-6)
    # the patch autoencoder starts from its PCA fit, so it reconstructs well from step 0
    assert (30.0 if kind == "patch" else 5.0) < res["val"]["psnr_y"] < 60.0
    assert any((ae_dir / "tb").iterdir())
    ck = load_checkpoint(ae_dir / "checkpoints" / "step_00000020.pt")
    assert set(ck["models"]) == {"ae", "disc"} and set(ck["ema"]) == {"ae"}
    export = ae_dir / "export" / "autoencoder.safetensors"
    meta = json.loads((ae_dir / "export" / "autoencoder.json").read_text())
    assert meta["dtype"] == "fp16"
    if kind == "patch":
        assert meta["params"] == {"kind": "patch", "embed_dim": 8, "channels": [16, 8], "blocks": [1, 1],
                                  "train_encoder": False}
    else:
        assert meta["params"]["n_embed"] == 64

    # the exported fp16 EMA weights are the checkpoint's EMA, rounded
    from safetensors.torch import load_file

    sd = load_file(str(export))
    w = "linear_decoder.weight" if kind == "patch" else "encoder.conv_in.weight"
    assert sd[w].dtype == torch.float16
    torch.testing.assert_close(sd[w].float(), ck["ema"]["ae"][w].half().float())
    if kind == "patch":  # the encoder is frozen: the trained model still has its PCA start
        torch.testing.assert_close(ck["models"]["ae"]["encoder.weight"], ck["ema"]["ae"]["encoder.weight"])

    rs_dir = tmp_path / "rs"
    rs_cfg = load_config(CONFIGS / "resshift_small.yaml", [
        f"out_dir={rs_dir}", f"autoencoder.weights={export}", *rs_ae, *PHOTO_DIRS,
        "model.image_size=16", "model.lq_size=16", "model.model_channels=32", "model.channel_mult=[1,2]",
        "model.num_res_blocks=[1,1]", "model.attention_resolutions=[16,8]", "model.swin_embed_dim=32",
        "data.crop=64", "data.length=8", "val.num_images=1", "val.crop=256", "loss.lpips_weight=0",
        "train.steps=20", "train.batch_size=2", "train.warmup=5", "train.log_every=10", "train.val_every=null",
        "train.ckpt_every=10", "train.num_workers=0", "train.tensorboard=false"])
    res = resshift_train.train(rs_cfg, quiet=True)
    assert res["step"] == 20
    rows = _csv(rs_dir / "train.csv")
    assert [r["step"] for r in rows] == ["10", "20"] and all(math.isfinite(float(r["mse"])) for r in rows)
    # validation sampled the EMA model on a 64x64 LR -> 256x256 output: PSNR-Y and NIQE are real numbers
    assert 5.0 < res["val"]["psnr_y"] < 60.0 and math.isfinite(res["val"]["niqe"])
    meta = json.loads((rs_dir / "export" / "resshift.json").read_text())
    assert meta["diffusion"]["steps"] == 4 and meta["scale"] == 4 and meta["model"]["model_channels"] == 32
    sd = load_file(str(rs_dir / "export" / "unet.safetensors"))
    assert not any("attn_mask" in k or "relative_position_index" in k for k in sd)

    # resuming a finished run does nothing and keeps the result
    again = resshift_train.train(rs_cfg, quiet=True)
    assert again["start_step"] == again["step"] == 20

    if kind == "patch":  # the two exports package into a model folder that fewstep.load reads
        import subprocess
        import sys

        import fewstep

        pkg = tmp_path / "pkg"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "package_fewstep_small.py"), "--autoencoder",
                        str(ae_dir / "export"), "--resshift", str(rs_dir / "export"), "--out", str(pkg)],
                       check=True, capture_output=True)
        up = fewstep.load(str(pkg))
        lr = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
        out = up.restore(lr, seed=3)
        assert out.shape == (1, 3, 80, 96) and 0 <= float(out.min()) and float(out.max()) <= 1
        torch.testing.assert_close(up.restore(lr, seed=3), out, rtol=0, atol=0)
        # the ResShift trainer's export is itself a model folder (--model PATH), with the same weights
        card = json.loads((rs_dir / "export" / "fewstep_model.json").read_text())
        assert card["vq"] == json.loads((pkg / "fewstep_model.json").read_text())["vq"]
        assert card["sha256"]["autoencoder.safetensors"] == json.loads((pkg / "fewstep_model.json").read_text())[
            "sha256"]["autoencoder.safetensors"]
        direct = fewstep.load(str(rs_dir / "export"))
        torch.testing.assert_close(direct.restore(lr, seed=3), out, rtol=0, atol=0)


def test_resshift_requires_trained_autoencoder(tmp_path):
    from fewstep.resshift import train as resshift_train

    cfg = load_config(CONFIGS / "resshift_small.yaml", [f"out_dir={tmp_path}", f"autoencoder.weights={tmp_path / 'no.safetensors'}"])
    with pytest.raises(FewstepError, match="no.safetensors not found"):
        resshift_train.train(cfg, quiet=True)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_configs_parse_and_build(name):
    """Every shipped config loads, names a known trainer, and its networks build with the official sizes."""
    from fewstep.commands.train import TRAINERS
    from fewstep.training.engine import TrainSettings

    cfg = load_config(CONFIGS / name)
    assert cfg["trainer"] in TRAINERS
    s = TrainSettings.from_config(cfg)
    assert s.steps > 0 and s.batch_size > 0
    if cfg["trainer"] == "resshift" and cfg["model"]["model_channels"] == 160:
        # the journal recipe (resshift.md §7.3)
        assert (s.lr, s.warmup, s.eta_min, s.ema_rate, s.steps) == (5e-5, 5000, 2e-5, 0.999, 400000)
        assert s.batch_size == (56 if "faceir" in name else 96)
        assert cfg["loss"]["lpips_weight"] == (10.0 if ("inpaint" in name or "faceir" in name) else 1.0)
        from fewstep.resshift import SwinUNet

        with torch.device("meta"):  # shapes only, no memory
            unet = SwinUNet(**cfg["model"])
        n = sum(p.numel() for p in unet.parameters())
        expect = {"resshift_realsr_v3.yaml": 118_593_583, "resshift_bicsr.yaml": 118_593_583}.get(name)
        if expect:
            assert n == expect  # resshift.md §3.3
        else:
            assert 118.6e6 < n < 119.0e6


def test_train_command_dispatch(tmp_path):
    from typer.testing import CliRunner

    import fewstep.cli as cli

    f = tmp_path / "c.yaml"
    f.write_text("trainer: nosuch\nout_dir: x\n")
    r = CliRunner().invoke(cli.app, ["train", str(f)])
    assert isinstance(r.exception, FewstepError) and "unknown trainer 'nosuch'" in str(r.exception)
    r = CliRunner().invoke(cli.app, ["train", str(f), "--set", "trainer=other", "--quiet"])
    assert isinstance(r.exception, FewstepError) and "unknown trainer 'other'" in str(r.exception)
    r = CliRunner().invoke(cli.app, ["train", str(tmp_path / "missing.yaml")])
    assert isinstance(r.exception, FewstepError) and "config not found" in str(r.exception)


def test_lpips_term_missing_weights(tmp_path, monkeypatch):
    """Without the LPIPS backbone file the term is dropped with a warning, or refused when required."""
    from fewstep.metrics.deep import load_lpips as cached_loader
    from fewstep.training.losses import load_lpips_loss as load_lpips

    monkeypatch.setenv("FEWSTEP_HOME", str(tmp_path / "home"))  # an empty cache, whatever this machine has
    cached_loader.cache_clear()

    assert load_lpips(0.0, torch.device("cpu")) is None
    with pytest.warns(UserWarning, match="training without the LPIPS term"):
        assert load_lpips(1.0, torch.device("cpu"), weights_dir=str(tmp_path)) is None
    with pytest.raises(FewstepError, match="weights not found"):
        load_lpips(1.0, torch.device("cpu"), weights_dir=str(tmp_path), required=True)


def test_one_patch_discriminator_for_both_trainers():
    """The autoencoder trainer's GroupNorm PatchGAN and S3Diff's spectral-norm default are one class."""
    from fewstep.s3diff.train import build_discriminator
    from fewstep.training.losses import PatchDiscriminator

    torch.manual_seed(0)
    group, spectral = PatchDiscriminator(3, 8, 2), build_discriminator({"channels": 8, "layers": 2})
    assert type(spectral) is PatchDiscriminator
    x = torch.randn(2, 3, 32, 32)
    for d in (group, spectral):  # 32 -> 16 -> 8 -> 7 (stride 1) -> 6: one logit per patch
        assert d(x).shape == (2, 1, 6, 6)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in group.modules())
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in spectral.modules())
    assert sum(k.endswith("weight_orig") for k in spectral.state_dict()) == 4  # every conv normalised
    with pytest.raises(FewstepError, match="norm"):
        PatchDiscriminator(norm="batch")
