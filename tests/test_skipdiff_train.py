"""SR3 model, trainers and registry entries of fewstep.skipdiff (tiny sizes; CPU seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.errors import FewstepError, WeightsNotFoundError
from fewstep.skipdiff import CosineChain, SkipDiffSampler, SR3UNet, load_sr3, save_sr3

TINY = dict(inner_channel=8, channel_mults=(1, 2), res_blocks=1, norm_groups=4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Two small textured images (smooth gradients + stripes) as a stand-in photo folder."""
    d = tmp_path_factory.mktemp("photos")
    yy, xx = np.mgrid[0:96, 0:112]
    for i in range(2):
        img = np.stack([(xx * (2 + i)) % 256, (yy * 3) % 256, ((xx + yy) * 5 * (i + 1)) % 256], -1)
        Image.fromarray(img.astype(np.uint8)).save(d / f"p{i}.png")
    return d


def test_unet_shapes_any_size_and_level_sensitivity():
    torch.manual_seed(0)
    net = SR3UNet(**TINY).eval()
    x = torch.randn(2, 6, 20, 28)  # not a multiple of the stride: padded inside, cropped back
    e1 = net(x, torch.tensor([0.1, 0.1]))
    e2 = net(x, torch.tensor([0.9, 0.9]))
    assert e1.shape == (2, 3, 20, 28)
    assert (e1 - e2).abs().mean() > 1e-4  # the continuous noise level reaches the output


def test_save_load_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    net = SR3UNet(**TINY).eval()
    p = tmp_path / "sr3_small.safetensors"
    save_sr3(net, p)
    back = load_sr3(p)
    x = torch.randn(1, 6, 16, 16)
    torch.testing.assert_close(back(x, torch.tensor([0.5])), net(x, torch.tensor([0.5])))
    with pytest.raises(WeightsNotFoundError, match="put missing.safetensors in"):
        load_sr3(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(FewstepError, match="bad.safetensors"):
        load_sr3(tmp_path / "bad.safetensors")


def test_registry_entries_build_and_report_nfe(tmp_path):
    import fewstep

    torch.manual_seed(0)
    save_sr3(SR3UNet(**TINY), tmp_path / "sr3_small.safetensors")
    up = fewstep.load("skipdiff-sr3", weights=str(tmp_path), policy="fixed", m="3")
    assert up.nfe == 12 and up.scale == 4
    out = up.restore(torch.rand(1, 3, 8, 8), seed=0)
    assert out.shape == (1, 3, 32, 32) and up.last_nfe == 12
    plain = fewstep.load("sr3-small", weights=str(tmp_path), steps=10)
    assert plain.nfe == 10
    with pytest.raises(FewstepError, match="policy_path"):
        fewstep.load("skipdiff-sr3", weights=str(tmp_path), policy="bandit")


def test_sr3_trainer_smoke_and_resume(tmp_path, photo_dir):
    from fewstep.skipdiff.train import train

    cfg = {"trainer": "sr3", "out_dir": str(tmp_path / "run"), "seed": 1, "threads": 1, "model": {**TINY, "residual": True},
           "data": {"hr_dir": str(photo_dir), "crop": 16, "scale": 4, "length": 16},
           "val": {"hr_dir": str(photo_dir), "crop": 32, "num_images": 1},
           "train": {"steps": 4, "stop_at": 2, "batch_size": 2, "lr": 1e-3, "log_every": 1, "ckpt_every": 2,
                     "device": "cpu", "tensorboard": False, "ema_rate": 0.9}}
    s1 = train(cfg, quiet=True)
    assert s1["step"] == 2
    cfg["train"]["stop_at"] = 4
    s2 = train(cfg, quiet=True)
    assert s2["step"] == 4 and np.isfinite(s2["train"]["loss"])
    assert "psnr_y" in s2["val"] and s2["val"]["psnr_y_bicubic"] > 10
    model = load_sr3(tmp_path / "run/export/sr3_small.safetensors")
    assert model.config["inner_channel"] == 8 and model.residual
    # the export is a model folder (`--model PATH`): SkipDiff with m=10 over the exported weights
    import fewstep
    from fewstep.skipdiff.sr3 import build

    up = fewstep.load(str(tmp_path / "run/export"), quiet=True)
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = build("skipdiff-sr3", weights=str(tmp_path / "run/export/sr3_small.safetensors"), policy="fixed", m=10)
    assert up.name == "run" and up.nfe == ref.nfe == 19
    torch.testing.assert_close(up.restore(lr, seed=5), ref.restore(lr, seed=5), rtol=0, atol=0)
    assert fewstep.load(str(tmp_path / "run/export"), m=3).nfe == 12  # options override the card


def test_policy_trainer_smoke(tmp_path, photo_dir):
    from fewstep.skipdiff import load_policy
    from fewstep.skipdiff.train import train

    torch.manual_seed(0)
    save_sr3(SR3UNet(**TINY), tmp_path / "base.safetensors")
    cfg = {"trainer": "skipdiff_policy", "out_dir": str(tmp_path / "pol"), "seed": 3, "threads": 1,
           "base": {"weights_file": str(tmp_path / "base.safetensors")},
           "data": {"hr_dir": str(photo_dir), "crop": 64, "num_images": 2},
           "reward": {"kind": "inv_niqe", "niqe": "ours", "block_size": 32},
           "ppo": {"obs_size": 32, "hidden": 32, "episodes": 3, "batch": 2}}
    s = train(cfg, quiet=True)
    assert s["images"] == 2 and 1 <= s["best_fixed_m"] <= 10
    # the bandit cannot beat the per-image oracle on its own training set
    assert s["bandit_train_reward"] <= s["oracle_train_reward"] + 1e-9
    en = torch.load(tmp_path / "pol/enumeration.pt", weights_only=True)
    assert en["rewards"].shape == (2, 10) and len(en["obs"][0]["chains"][4]) == 6  # m=5: 5 steps + start
    bandit = load_policy(tmp_path / "pol/bandit_policy.pt")
    ppo = load_policy(tmp_path / "pol/ppo_policy.pt")
    s_ = SkipDiffSampler(CosineChain(100))
    for pol in (bandit, ppo):
        out, nfe = s_(load_sr3(tmp_path / "base.safetensors"), torch.rand(1, 3, 8, 8), policy=pol, seed=0)
        assert out.shape == (1, 3, 32, 32) and 10 <= int(nfe[0]) <= 19


def test_ppo_replay_matches_online_reset_rollout(tmp_path, photo_dir):
    """The cached replay environment gives the observation an online reset-mode rollout would."""
    from fewstep.skipdiff.train import _state

    torch.manual_seed(0)
    unet = SR3UNet(**TINY).eval()
    s = SkipDiffSampler(CosineChain(100))
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cr = s.coarse(unet, lr, 5)
    en = s.enumerate(unet, cr, record=True)
    cache = {"obs": [{"coarse": cr.x[0], "chains": [[x[0] for x in ch] for ch in en["states"]]}]}

    class Script:  # denoise, denoise, skip, then denoise to the end
        def act(self, obs, st):
            return torch.tensor([1 if obs["k"] == 2 else 0]), st

    res = s.fine(unet, cr, Script(), record=True)
    start, done = -1, 0
    for k in range(10):
        torch.testing.assert_close(_state(cache, 0, 10, start, done), res.states[k][0], atol=1e-5, rtol=0)
        if k == 2:
            start, done = -1, 0
        else:
            start, done = (k if start < 0 else start), done + 1


def test_shipped_files_load():
    """The shipped SR3 weights and NIQE-ours model load and run (quality: docs/skipdiff.md)."""
    import fewstep
    from fewstep.skipdiff.rewards import niqe_ours

    up = fewstep.load("skipdiff-sr3", m=1)
    assert up.unet.residual and up.nfe == 10
    lr = torch.full((1, 3, 8, 8), 0.5)
    out = up.restore(lr, seed=0)
    assert out.shape == (1, 3, 32, 32)
    # a flat grey input stays close to grey (the residual chain adds little to a flat image)
    assert (out - 0.5).abs().mean() < 0.1
    model = niqe_ours(32)
    assert model.block_size == 32 and model.mu.shape == (36,)
