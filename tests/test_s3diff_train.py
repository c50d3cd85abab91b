"""S3Diff training on the tiny SD-Turbo stand-in: loss goes down; checkpoints round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FIX = Path(__file__).parent / "fixtures" / "s3diff"


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(sd_turbo_dir: Path, tmp: Path, **over) -> dict:
    from PIL import Image

    hr = tmp / "hr"
    hr.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = np.kron(base, np.ones((10, 10, 1), dtype=np.uint8))  # blocky 80x80 photo stand-in
        Image.fromarray(img).save(hr / f"{i}.png")
    cfg = {
        "trainer": "s3diff", "out_dir": str(tmp / "run"), "seed": 0,
        "model": {"sd_turbo": str(sd_turbo_dir), "de_net": str(FIX / "de_net.pth")},
        "loss": {"l2": 2.0, "lpips": 0.0, "gan": 0.5, "neg_prob": 0.05},
        "discriminator": {"channels": 8, "layers": 2},
        "data": {"hr_dir": str(hr), "crop": 64, "length": 4},
        "train": {"steps": 2, "batch_size": 2, "lr": 1e-4, "schedule": "constant", "ema_rate": None,
                  "clip_grad": 1.0, "log_every": 1, "ckpt_every": 2, "keep_last": 1, "device": "cpu",
                  "tensorboard": False},
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg


class _Ctx:
    device = torch.device("cpu")
    is_main = True
    quiet = True


def test_trainable_set_is_official(sd_turbo_dir, tmp_path):
    from fewstep.s3diff.train import S3DiffTask

    task = S3DiffTask(_config(sd_turbo_dir, tmp_path))
    task.setup(_Ctx())
    gen = task.build_models()["generator"]
    m = gen.model
    names = set(m.trainable_parameters())
    n_lora = sum(1 for k in names if "lora_" in k)
    assert n_lora == 2 * (257 + 31)
    assert {"unet.conv_in.weight", "unet.conv_in.bias"} <= names
    assert sum(1 for k in names if k.startswith("modulation.")) == 6 * 2 + 2  # six MLPs + two tables
    assert "modulation.w" not in names  # the Fourier frequencies stay fixed
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == names
    # from scratch: LoRA B = 0 and M ~ 0, so the model starts as plain SD-Turbo
    assert all(float(l.lora_B[l.adapter].weight.detach().abs().max()) == 0 for l in m.unet_lora.values())


def test_loss_decreases_on_a_fixed_batch(sd_turbo_dir, tmp_path):
    from fewstep.s3diff.train import S3DiffTask

    cfg = _config(sd_turbo_dir, tmp_path, loss={"l2": 1.0, "lpips": 0.0, "gan": 0.0, "neg_prob": 0.0})
    cfg["model"]["s3diff_ckpt"] = str(FIX / "s3diff.pkl")
    task = S3DiffTask(cfg)
    task.setup(_Ctx())
    gen = task.build_models()["generator"]
    batch = task.collate([task.dataset()[i] for i in range(2)])
    params = [p for p in gen.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    losses = []
    for _ in range(6):
        torch.manual_seed(0)  # same encoder noise each step: a fixed objective
        loss, logs = task.generator_loss(gen, None, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["l2"])
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_train_end_to_end_checkpoint_and_official_export(sd_turbo_dir, tmp_path):
    from fewstep.s3diff.model import S3DiffModel
    from fewstep.s3diff.train import train

    cfg = _config(sd_turbo_dir, tmp_path)
    train(cfg, quiet=True)
    export = Path(cfg["out_dir"]) / "export" / "s3diff.pkl"
    ck = torch.load(export, map_location="cpu", weights_only=True)
    ref = torch.load(FIX / "s3diff.pkl", map_location="cpu", weights_only=True)
    assert list(ck) == list(ref)
    assert set(ck["state_dict_unet"]) == set(ref["state_dict_unet"])
    assert set(ck["state_dict_vae"]) == set(ref["state_dict_vae"])
    # the exported file loads like an official one and reproduces the trained tensors
    m = S3DiffModel.from_sd_turbo(sd_turbo_dir)
    m.load_official(export)
    back = m.official_state_dict()
    for key in ("state_dict_unet", "state_dict_vae", "state_dict_unet_fuse_mlp"):
        assert all(torch.equal(back[key][k], v) for k, v in ck[key].items())
    # training moved the weights away from the zero-init LoRA B
    assert any(float(v.abs().max()) > 0 for k, v in ck["state_dict_unet"].items() if "lora_B" in k)
    # resumable: a longer run continues from the step-2 checkpoint
    cfg["train"]["steps"] = 3
    cfg["train"]["ckpt_every"] = 3
    train(cfg, quiet=True)
    ckpts = sorted(p.name for p in (Path(cfg["out_dir"]) / "checkpoints").iterdir())
    assert any("3" in n for n in ckpts), ckpts
    ck3 = torch.load(export, map_location="cpu", weights_only=True)
    assert any(not torch.equal(ck3["state_dict_unet"][k], v) for k, v in ck["state_dict_unet"].items())
