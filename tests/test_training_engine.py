"""Training engine: exact resume, DDP (2 gloo processes) == single process, schedule, EMA, config.

The toy trainer at the bottom is also run by `fewstep train` under torchrun in the DDP test
(trainer: "test_training_engine:toy_train", with this folder on PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fewstep.errors import FewstepError
from fewstep.training import TrainTask, load_config, run_training
from fewstep.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from fewstep.training.ema import EMA
from fewstep.training.schedule import build_scheduler, lr_at

HERE = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- toy trainer
class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))  # integer buffer: EMA copies it

    def forward(self, x):
        self.calls += 1
        return self.body(x)


class ToyData(torch.utils.data.Dataset):
    """40 fixed samples; optional numpy jitter (global RNG) to check that numpy state resumes."""

    def __init__(self, jitter: float):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 4, generator=g)
        self.y = torch.stack([self.x[:, 0] - 2 * self.x[:, 1], self.x[:, 2] * self.x[:, 3]], 1)
        self.jitter = jitter

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if self.jitter:
            x = x + torch.from_numpy(np.random.normal(0, self.jitter, 4).astype(np.float32))
        return {"x": x, "y": self.y[i], "index": torch.tensor(i)}


class ToyTask(TrainTask):
    def __init__(self, cfg):
        self.t = cfg.get("toy", {})

    def build_models(self):
        return {"net": ToyNet()}

    def dataset(self):
        return ToyData(float(self.t.get("jitter", 0.0)))

    def loss(self, ctx, opt, batch):
        if self.t.get("kill_at") == ctx.step:  # a preemption signal arriving in the middle of a step
            self.t["kill_at"] = None  # once: a second signal would abort at once
            os.kill(os.getpid(), signal.SIGTERM)
        x = batch["x"]
        if self.t.get("noise"):  # torch global RNG inside the loss, as diffusion losses do
            x = x + float(self.t["noise"]) * torch.randn_like(x)
        loss = (ctx.models["net"](x) - batch["y"]).pow(2).mean()
        return loss, {"index_sum": float(batch["index"].sum())}

    def validate(self, ctx, models):
        torch.randn(100)  # validation draws must not shift the training stream
        np.random.rand(3)
        x = ToyData(0.0).x
        return {"val_mse": float((models["net"](x) - ToyData(0.0).y).pow(2).mean())}


def toy_train(cfg, resume=True, quiet=False):
    return run_training(ToyTask(cfg), cfg, resume=resume, quiet=quiet)


def toy_cfg(out_dir, **train):
    base = dict(steps=10, batch_size=8, grad_accum=2, lr=0.05, warmup=3, eta_min=0.005, ema_rate=0.9,
                clip_grad=1.0, log_every=1, val_every=3, ckpt_every=100, keep_last=2, tensorboard=False)
    base.update(train)
    return {"trainer": "test_training_engine:toy_train", "out_dir": str(out_dir), "seed": 7,
            "toy": {"noise": 0.1, "jitter": 0.05}, "train": base}


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_states_equal(a, b, atol=0.0):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=atol, rtol=0 if atol == 0 else 1e-5)
        else:
            assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            assert_states_equal(a[k], b[k], atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_states_equal(x, y, atol)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12 if atol == 0 else 1e-5)
    else:
        assert a == b


# ----------------------------------------------------------------------------- resume
def test_resume_equals_uninterrupted(tmp_path):
    full = toy_train(toy_cfg(tmp_path / "full"), quiet=True)
    assert full["step"] == 10

    # N = 7 steps (mid-epoch: 40 samples / batch 8 = 5 steps per epoch), stop, resume for M = 3
    part = toy_train(toy_cfg(tmp_path / "part", stop_at=7), quiet=True)
    assert part["step"] == 7 and latest_checkpoint(tmp_path / "part" / "checkpoints").name == "step_00000007.pt"
    rest = toy_train(toy_cfg(tmp_path / "part"), quiet=True)
    assert rest["start_step"] == 7 and rest["step"] == 10

    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_00000010.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "step_00000010.pt")
    for key in ("models", "ema", "optimizers", "schedulers", "step", "epoch", "batch_in_epoch"):
        assert_states_equal(a[key], b[key])
    assert (a["epoch"], a["batch_in_epoch"]) == (2, 0)
    # the EMA really averages (differs from the live weights) and copies the integer buffer
    assert not torch.allclose(a["ema"]["net"]["body.0.weight"], a["models"]["net"]["body.0.weight"])
    assert int(a["ema"]["net"]["calls"]) == int(a["models"]["net"]["calls"]) == 20  # 10 steps x 2 micro-batches

    # identical per-step losses and data (sum of sample indices) in the logs, steps 1..10
    la, lb = read_csv(tmp_path / "full" / "train.csv"), read_csv(tmp_path / "part" / "train.csv")
    assert [r["step"] for r in lb] == [str(i) for i in range(1, 11)]
    for ra, rb in zip(la, lb):
        assert float(ra["loss"]) == float(rb["loss"]) and float(ra["index_sum"]) == float(rb["index_sum"])
        assert float(ra["lr"]) == float(rb["lr"])
    # every sample of an epoch is used once: 5 steps x 2 micro-batches x 4 samples cover indices 0..39
    # (the log holds the mean over the 2 micro-batches of a step)
    assert sum(2 * float(r["index_sum"]) for r in la[:5]) == sum(range(40))
    # the optimizer state was really restored (Adam moments exist and match)
    assert a["optimizers"]["main"]["state"][0]["exp_avg"].abs().sum() > 0
    # checkpoints rotate (keep_last=2) and validation ran at steps 3, 6, 9 and at the end
    assert [s for s, _ in list_checkpoints(tmp_path / "part" / "checkpoints")] == [7, 10]
    assert [r["step"] for r in read_csv(tmp_path / "full" / "val.csv")] == ["3", "6", "9", "10"]


def test_signal_stops_at_step_boundary_with_checkpoint(tmp_path):
    """SIGTERM mid-step: the step finishes, a checkpoint is written, and resuming matches a clean run."""
    cfg = toy_cfg(tmp_path / "sig", steps=6, val_every=None)
    cfg["toy"]["kill_at"] = 2
    res = toy_train(cfg, quiet=True)
    assert res["interrupted"] and res["step"] == 3
    assert latest_checkpoint(tmp_path / "sig" / "checkpoints").name == "step_00000003.pt"
    del cfg["toy"]["kill_at"]
    assert toy_train(cfg, quiet=True)["step"] == 6
    clean = toy_train(toy_cfg(tmp_path / "clean", steps=6, val_every=None), quiet=True)
    assert not clean["interrupted"]
    a = load_checkpoint(tmp_path / "clean" / "checkpoints" / "step_00000006.pt")
    b = load_checkpoint(tmp_path / "sig" / "checkpoints" / "step_00000006.pt")
    for key in ("models", "ema", "optimizers"):
        assert_states_equal(a[key], b[key])


def test_resume_refused_without_flag_and_bad_checkpoint(tmp_path):
    toy_train(toy_cfg(tmp_path / "r", steps=2, grad_accum=1, val_every=None), quiet=True)
    with pytest.raises(FewstepError, match="already holds checkpoints"):
        toy_train(toy_cfg(tmp_path / "r", steps=4, grad_accum=1), resume=False, quiet=True)
    bad = tmp_path / "r" / "checkpoints" / "step_00000009.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FewstepError, match="step_00000009.pt"):
        toy_train(toy_cfg(tmp_path / "r", steps=12, grad_accum=1), quiet=True)


# ----------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    import yaml

    # no noise/jitter: each process draws its own random numbers, the data split is what is tested
    cfg = toy_cfg(tmp_path / "ddp", steps=6, grad_accum=1, clip_grad=None, val_every=None)
    cfg["toy"] = {"noise": 0.0, "jitter": 0.0}
    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "fewstep.cli", "train", str(cfg_file), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single_cfg = load_config(cfg_file, [f"out_dir={tmp_path / 'single'}"])
    toy_train(single_cfg, quiet=True)

    a = load_checkpoint(tmp_path / "single" / "checkpoints" / "step_00000006.pt")
    b = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "step_00000006.pt")
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    for key in ("models", "ema", "optimizers"):
        assert_states_equal(a[key]["net" if key != "optimizers" else "main"],
                            b[key]["net" if key != "optimizers" else "main"], atol=1e-6)
    la, lb = read_csv(tmp_path / "single" / "train.csv"), read_csv(tmp_path / "ddp" / "train.csv")
    assert len(la) == len(lb) == 6
    for ra, rb in zip(la, lb):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-6)
        # same samples per step: the logged value is the mean over the 2 ranks of per-rank index sums
        assert float(ra["index_sum"]) == 2 * float(rb["index_sum"])
    # weights moved: the comparison is not between two untrained models
    torch.manual_seed(7)
    init = ToyNet().state_dict()["body.2.weight"]
    assert (a["models"]["net"]["body.2.weight"] - init).abs().max() > 1e-2


# ----------------------------------------------------------------------------- pieces
def test_schedule_matches_torch_warmup_then_cosine():
    """Warm-up then torch's own CosineAnnealingLR(T_max=total-warmup, eta_min), as the journal recipe."""
    total, warmup, base, eta_min = 50, 10, 5e-5, 2e-5
    p = nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.SGD([p], lr=base)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=total - warmup, eta_min=eta_min)
    ref_lrs = []
    for _ in range(total - warmup):
        ref_lrs.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    ours = [lr_at(k, base_lr=base, total=total, warmup=warmup, eta_min=eta_min) for k in range(total)]
    assert ours[:warmup] == pytest.approx([base * (k + 1) / warmup for k in range(warmup)])
    assert ours[warmup:] == pytest.approx(ref_lrs, rel=1e-9)
    # and the LambdaLR we actually train with gives the same numbers
    opt = torch.optim.SGD([p], lr=base)
    sch = build_scheduler(opt, total=total, warmup=warmup, eta_min=eta_min)
    got = []
    for _ in range(total):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert got == pytest.approx(ours, rel=1e-12)
    assert lr_at(total - 1, base_lr=base, total=total, warmup=warmup, eta_min=eta_min) > eta_min


def test_ema_update_formula():
    m = ToyNet()
    ema = EMA(m, rate=0.9)
    w0 = m.body[0].weight.detach().clone()
    with torch.no_grad():
        m.body[0].weight.add_(1.0)
    m.calls += 5
    ema.update(m)
    torch.testing.assert_close(ema.module.body[0].weight, 0.9 * w0 + 0.1 * (w0 + 1.0))
    assert int(ema.module.calls) == 5
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_config_paths_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "c.yaml"
    f.write_text("trainer: resshift\nout_dir: ../runs/x\ndata:\n  hr_dir: photos\n  crop: 64\n"
                 "train:\n  lr: 5e-5\n  betas: [0.9, 0.99]\n")
    cfg = load_config(f, ["train.lr=1e-4", "train.steps=20", "data.crop=32", "model.depth=[1,2]",
                          "data.val_dir=rel/val"])
    assert cfg["out_dir"] == str((tmp_path / "runs" / "x").resolve())           # relative to the file
    assert cfg["data"]["hr_dir"] == str((tmp_path / "sub" / "photos").resolve())
    assert cfg["data"]["val_dir"] == str((Path.cwd() / "rel" / "val").resolve())  # --set: relative to CWD
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["steps"] == 20 and cfg["data"]["crop"] == 32
    assert cfg["model"]["depth"] == [1, 2] and cfg["train"]["betas"] == [0.9, 0.99]
    with pytest.raises(FewstepError, match="key.sub=value"):
        load_config(f, ["train.lr"])
    with pytest.raises(FewstepError, match="config not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(FewstepError, match="unknown key"):
        toy_train(toy_cfg(tmp_path / "o", learning_rate=1.0), quiet=True)
