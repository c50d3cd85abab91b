"""Shared test fixtures and paths."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# real photographs shipped with the tests (copies and crops of ../shared/data/photos, licences in
# its MANIFEST.json), so a clone with nothing beside it passes
PHOTOS = Path(__file__).parent / "fixtures" / "photos"
S3DIFF_FIX = Path(__file__).parent / "fixtures" / "s3diff"
RESSHIFT_FIX = Path(__file__).parent / "fixtures" / "resshift"


def write_tiny_model_folder(d: Path) -> Path:
    """A fewstep model folder in `d` holding the official-format tiny ResShift fixture weights
    (default tile 64, overlap 16)."""
    import json

    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(RESSHIFT_FIX / "unet_tiny.pth", d / "unet.pth")
    shutil.copy(RESSHIFT_FIX / "vq_tiny.pth", d / "vq.pth")
    card = {
        "type": "resshift", "name": "tiny", "scale": 4, "task": "realsr", "tile": 64, "overlap": 16,
        "unet": json.loads((RESSHIFT_FIX / "unet_tiny_config.json").read_text())["constructor_kwargs"],
        "vq": json.loads((RESSHIFT_FIX / "vq_tiny_config.json").read_text())["constructor_kwargs"],
        "chain": {"steps": 4, "min_noise_level": 0.2, "kappa": 2.0, "etas_end": 0.99, "power": 0.3},
        "unet_file": "unet.pth", "vq_file": "vq.pth",
    }
    (d / "fewstep_model.json").write_text(json.dumps(card))
    return d


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny, latency-bound models: on a 2-core machine shared
    with other work, spinning OpenMP threads made them 5-50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sd_turbo_dir(tmp_path_factory) -> Path:
    """The tiny SD-Turbo stand-in in diffusers layout, with its text encoder rebuilt from the
    trimmed copy kept in the fixtures (see tests/fixtures/s3diff/README)."""
    from safetensors.torch import load_file, save_file

    src = S3DIFF_FIX / "sd_turbo_tiny"
    dst = tmp_path_factory.mktemp("sd") / "sd-turbo"
    dst.mkdir()
    for name in ("unet", "vae", "scheduler", "tokenizer", "model_index.json"):
        os.symlink((src / name).resolve(), dst / name)
    (dst / "text_encoder").mkdir()
    shutil.copy(src / "text_encoder_trimmed" / "config.json", dst / "text_encoder" / "config.json")
    sd = load_file(src / "text_encoder_trimmed" / "model_trimmed.safetensors")
    key = "text_model.embeddings.token_embedding.weight"
    full = torch.zeros(tuple(sd.pop(key + ".shape").tolist()))
    full[sd.pop(key + ".ids")] = sd.pop(key + ".rows")
    sd[key] = full
    save_file(sd, dst / "text_encoder" / "model.safetensors")
    return dst
