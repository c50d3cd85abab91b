"""The bundled default model, `fewstep-x4` (Real-ESRGAN x4plus + ResShift refiner): intact,
loadable offline, the default of `fewstep upscale`, and sharper than bicubic on a real photo."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fewstep
from fewstep.resshift.models import small_model_dir
from fewstep.resshift.two_stage import Refiner, model_dir

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_bundled_files_match_their_card_and_the_size_budget():
    folder = model_dir()
    card = json.loads((folder / "fewstep_model.json").read_text())
    assert card["type"] == "two-stage" and card["scale"] == 4
    assert card["chain"]["prediction"] == "residual" and card["vq"]["embed_dim"] == 48
    total = 0
    for name in (card["stage1_file"], card["unet_file"], card["vq_file"]):
        data = (folder / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == card["sha256"][name]
        total += len(data)
    small = json.loads((small_model_dir() / "fewstep_model.json").read_text())
    total += sum((small_model_dir() / small[k]).stat().st_size for k in ("unet_file", "vq_file"))
    assert total <= 80e6  # issue #10: all bundled weight files together
    assert (folder / "MODEL_CARD.md").is_file()


def test_is_the_default_of_upscale():
    from fewstep.commands.upscale import DEFAULT_MODEL

    assert DEFAULT_MODEL == "fewstep-x4"
    assert "fewstep-x4" in fewstep.available() and "fewstep-small" in fewstep.available()


def test_untrained_refiner_returns_stage_one_exactly():
    """Residual prediction + a zero last conv + an exactly invertible latent: before training the
    refiner is the identity, so the two-stage model starts as stage 1."""
    from fewstep.resshift.chain import ResShiftChain
    from fewstep.resshift.patch_ae import PatchAutoencoder
    from fewstep.resshift.unet import SwinUNet

    torch.manual_seed(0)
    ae = PatchAutoencoder(embed_dim=48, channels=[8, 8], blocks=[0, 0])
    ae.encoder.weight.data = torch.linalg.qr(torch.randn(48, 48))[0].reshape(48, 48, 1, 1) * 3
    ae.linear_decoder.weight.data = torch.linalg.inv(ae.encoder.weight.data[:, :, 0, 0]).reshape(48, 48, 1, 1)
    ae.encoder.bias.data.zero_()
    ae.linear_decoder.bias.data.zero_()
    unet = SwinUNet(image_size=16, in_channels=48, out_channels=48, model_channels=32, channel_mult=[1, 2],
                    num_res_blocks=[1, 1], attention_resolutions=[], num_head_channels=32, swin_embed_dim=32,
                    window_size=8, lq_size=64)
    torch.nn.init.zeros_(unet.out[-1].weight)
    torch.nn.init.zeros_(unet.out[-1].bias)
    chain = ResShiftChain(steps=4, kappa=0.5, prediction="residual").respaced([0, 3])
    y = torch.rand(2, 3, 40, 56) * 2 - 1
    out = Refiner(unet, ae, chain).sample(y, seeds=[1, 2])
    torch.testing.assert_close(out, y, atol=2e-5, rtol=0)


def test_restores_a_real_photo_with_sharper_edges_than_bicubic():
    """examples/seeding_256.png as ground truth, MATLAB-bicubic x1/4 as input: fewstep-x4 must
    recover far more of the HR's edges than bicubic and more than stage 1 alone (edge_recovery;
    measured 0.501 vs 0.355 bicubic, 0.489 stage 1), losing at most 0.5 dB PSNR-Y to stage 1
    (measured 32.61 vs 32.69 dB)."""
    from fewstep.degrade import imresize
    from fewstep.imageio import read_rgb8
    from fewstep.metrics.edge import edge_recovery
    from fewstep.metrics.fullref import psnr

    hr8 = read_rgb8(ROOT / "examples" / "seeding_256.png")
    hr = torch.from_numpy(hr8).permute(2, 0, 1).float() / 255
    lr = torch.from_numpy(imresize(hr8.astype(np.float64) / 255, 0.25)).permute(2, 0, 1).float().clamp(0, 1)
    up = fewstep.load("fewstep-x4")
    out = up.restore(lr[None], seed=0)[0]
    stage1 = up.stage1.restore(lr[None])[0]
    bic = torch.nn.functional.interpolate(lr[None], scale_factor=4, mode="bicubic")[0].clamp(0, 1)
    e_out, e_bic = edge_recovery(out, hr), edge_recovery(bic, hr)
    assert e_out > e_bic + 0.1, (e_out, e_bic)
    assert e_out > edge_recovery(stage1, hr), e_out
    assert psnr(out, hr, crop_border=4, y_channel=True) > psnr(stage1, hr, crop_border=4, y_channel=True) - 0.5
    assert (out - stage1).abs().mean() > 1e-3  # the refiner does change stage 1's output
    torch.testing.assert_close(up.restore(lr[None], seed=0)[0], out, rtol=0, atol=0)


def test_strength_map_is_flat_strength_in_flat_areas_and_strength_at_edges():
    """The refiner's change is applied fully where stage 1 is flat (plastic sky, bokeh) and damped to
    `strength` in texture: exp(-local_std / flat_tau) blends the two."""
    ref = fewstep.load("fewstep-x4").refiner
    assert (ref.strength, ref.flat_strength, ref.flat_tau) == (0.05, 0.75, 3.0)  # the card's
    y = torch.full((1, 3, 64, 64), -0.2)
    y[..., 32:] = torch.where(torch.arange(64) % 4 < 2, 0.6, -0.6).view(1, 1, 64, 1)  # stripes, right half
    s = ref.strength_map(y)[0, 0]
    assert s.shape == (64, 64)
    assert float(s[:, :20].min()) > 0.745  # flat: ~flat_strength
    assert float(s[:, 44:].max()) < 0.0501 and float(s[:, 44:].min()) >= 0.05 - 1e-6  # stripes: strength
    row = s[32, :40]  # towards the stripes the strength falls smoothly from flat_strength to strength
    assert bool((row[1:] <= row[:-1] + 1e-6).all()) and bool(((row > 0.06) & (row < 0.74)).any())


def test_one_strength_everywhere_equals_scaling_the_change_in_the_latent():
    """flat_strength = strength makes the pixel-space blend a constant, which must equal the old
    latent-space scaling (the PCA latent decodes linearly); flat_strength=-1 selects the latter."""
    lr = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(3))
    a = fewstep.load("fewstep-x4", strength=0.3, flat_strength=-1).restore(lr, seed=5)
    b = fewstep.load("fewstep-x4", strength=0.3, flat_strength=0.3).restore(lr, seed=5)
    c = fewstep.load("fewstep-x4").restore(lr, seed=5)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
    assert (a - c).abs().max() > 1e-3


def test_edge_shortfall_loss_matches_its_definition():
    from fewstep.resshift.two_stage import edge_shortfall

    g = torch.Generator().manual_seed(0)
    hr = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 64, 64, generator=g), 3, 1, 1)
    assert float(edge_shortfall(hr, hr)) < 1e-5  # identical edges: no shortfall
    assert float(edge_shortfall(hr * 2, hr)) < 1e-5  # stronger edges are never penalised
    assert float(edge_shortfall(hr * 0.5, hr)) == pytest.approx(0.5, abs=1e-3)  # half as strong
    flat = torch.full_like(hr, 0.5)
    assert float(edge_shortfall(flat, hr)) == pytest.approx(1.0, abs=1e-5)


def test_refiner_trainer_runs_from_a_stage_one_cache(tmp_path):
    """`trainer: resshift-refiner` on a tiny hand-made cache: it trains, logs every loss term, and
    exports a UNet whose last conv has moved away from its zero start."""
    from safetensors.torch import load_file

    from fewstep.resshift.patch_ae import PatchAutoencoder
    from fewstep.resshift.two_stage import train
    from fewstep.training.config import load_config

    g = torch.Generator().manual_seed(0)
    hr = (torch.rand(3, 3, 64, 64, generator=g) * 255).to(torch.uint8)
    y = torch.nn.functional.avg_pool2d(hr.float(), 3, 1, 1).round().to(torch.uint8)  # a blurrier "stage 1"
    torch.save({"hr": hr, "y": y, "preset": torch.zeros(3, dtype=torch.long)}, tmp_path / "cache.pt")
    ae = PatchAutoencoder(embed_dim=48, channels=[8, 8], blocks=[0, 0])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(tmp_path / "ae.safetensors"))
    cfg = load_config(ROOT / "configs" / "fewstep_x4_refiner.yaml", [
        f"out_dir={tmp_path / 'run'}", f"autoencoder.weights={tmp_path / 'ae.safetensors'}",
        f"data.cache_file={tmp_path / 'cache.pt'}", f"data.hr_dir={tmp_path}", "data.crop=64",
        "model.image_size=16", "model.lq_size=64", "loss.edge_recovery_weight=1.0",
        "train.steps=4", "train.batch_size=2", "train.warmup=1", "train.log_every=2", "train.ckpt_every=4"])
    assert cfg["trainer"] == "resshift-refiner"
    res = train(cfg, quiet=True)
    assert res["step"] == 4
    header = (tmp_path / "run" / "train.csv").read_text().splitlines()[0].split(",")
    assert {"mse", "l1", "edge", "edge_shortfall"} <= set(header)
    sd = load_file(str(tmp_path / "run" / "export" / "unet.safetensors"))
    assert sd["out.2.weight"].float().abs().max() > 0
