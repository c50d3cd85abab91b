"""The shared checkpoint layer (fewstep.checkpoint): every wrapped layout reads to the same weights,
loading is strict with the declared exceptions, and every error names the file and the key."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fewstep.checkpoint import canonical_state_dict, load_state_dict, read_checkpoint, read_state_dict
from fewstep.errors import CheckpointError, WeightsNotFoundError


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net[1].running_mean.copy_(torch.arange(4.0))  # a buffer with a value of its own
    return net


@pytest.mark.parametrize("layout", ["bare", "state_dict+module", "params_ema+compile+ddp", "ema", "model",
                                    "safetensors"])
def test_every_layout_reads_to_the_same_weights(tmp_path, layout):
    ref = _net().state_dict()
    if layout == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in ref.items()}, str(path))
    else:
        obj = {
            "bare": ref,
            "state_dict+module": {"state_dict": {"module." + k: v for k, v in ref.items()}, "epoch": 3},
            # EMA weights win over the raw ones (BasicSR writes both)
            "params_ema+compile+ddp": {"params_ema": {"_orig_mod.module." + k: v for k, v in ref.items()},
                                       "params": {k: torch.zeros_like(v) for k, v in ref.items()}},
            "ema": {"ema": dict(ref), "step": 10},
            "model": {"model": dict(ref)},
        }[layout]
        path = tmp_path / "w.pth"
        torch.save(obj, path)
    sd = read_state_dict(path)
    assert sorted(sd) == sorted(ref)
    for k in ref:
        assert torch.equal(sd[k], ref[k])
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_state_dict(fresh, sd, str(path))
    assert torch.equal(fresh[1].running_mean, torch.arange(4.0)) and torch.equal(fresh[0].weight, ref["0.weight"])


def test_strict_errors_name_file_and_key(tmp_path):
    sd = _net().state_dict()
    src = str(tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"w\.pth: does not match Sequential: missing 1 key.*'0\.bias'"):
        load_state_dict(_net(), {k: v for k, v in sd.items() if k != "0.bias"}, src)
    with pytest.raises(CheckpointError, match=r"w\.pth: .*unexpected 1 key.*'head\.weight'"):
        load_state_dict(_net(), {**sd, "head.weight": torch.zeros(1)}, src)
    with pytest.raises(CheckpointError, match=r"w\.pth: shape mismatch for '0\.bias': file \(5,\) vs model \(4,\)"):
        load_state_dict(_net(), {**sd, "0.bias": torch.zeros(5)}, src)
    # declared exceptions: an ignored key may be absent or extra; an optional key may be absent
    net = _net()
    load_state_dict(net, {**{k: v for k, v in sd.items() if k != "1.num_batches_tracked"}, "x.attn_mask": torch.ones(2)},
                    src, ignore=lambda k: k.endswith(("num_batches_tracked", "attn_mask")))
    before = net[0].bias.clone()
    load_state_dict(net, {k: v * 0 for k, v in sd.items() if k != "0.bias"}, src, optional=lambda k: k == "0.bias")
    assert torch.equal(net[0].bias, before) and float(net[0].weight.detach().abs().sum()) == 0.0


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"weights not found: put nope\.pth in "):
        read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth: cannot read checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a readable safetensors file"):
        read_checkpoint(tmp_path / "junk.safetensors")

    class Evil:  # pickled code: refused by weights_only, never run
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth: cannot read checkpoint"):
        read_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"w: no state dict found \(top-level keys: epoch, step\)"):
        canonical_state_dict({"epoch": 1, "step": {"a": 1}}, "w")
