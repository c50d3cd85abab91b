"""fewstep.utils: the one home of dtype names, pad-to-multiple and seed derivation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from fewstep.errors import FewstepError
from fewstep.utils.dtypes import torch_dtype
from fewstep.utils.padding import pad_to_multiple
from fewstep.utils.seeding import seed_from, seed_states


def test_dtype_names():
    assert [torch_dtype(n) for n in ("fp32", "float32", "BF16", "bfloat16", "fp16", "float16")] == [
        torch.float32, torch.float32, torch.bfloat16, torch.bfloat16, torch.float16, torch.float16]
    assert torch_dtype(torch.float64) is torch.float64
    with pytest.raises(FewstepError, match=r"^--dtype must be one of fp32, bf16, fp16, got 'fp8'$"):
        torch_dtype("fp8", what="--dtype")


def test_pad_to_multiple_reflects_and_falls_back_to_replicate():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    y, pad = pad_to_multiple(x, 4)
    assert pad == (1, 0) and y.shape == (1, 1, 4, 4)
    assert torch.equal(y[0, 0, 3], x[0, 0, 1])  # reflect: the row above the last one
    assert pad_to_multiple(x, 1)[0] is x
    tiny = torch.tensor([[[[5.0]]]])  # 1x1 to 4x4: reflect cannot reach, replicate does
    y, pad = pad_to_multiple(tiny, 4)
    assert pad == (3, 3) and torch.equal(y, torch.full((1, 1, 4, 4), 5.0))


def test_seeds_are_the_documented_hashes():
    key = "fewstep:7:64:128"
    want = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % 2**63
    assert seed_from(key) == want
    want31 = int.from_bytes(hashlib.sha256(b"0/flower.png").digest()[:4], "little") % 2**31
    assert seed_from("0/flower.png", bits=31, algorithm="sha256") == want31
    assert seed_from("a") != seed_from("b")
    np.testing.assert_array_equal(seed_states([1, 2, 3], 2),
                                  np.random.SeedSequence([1, 2, 3]).generate_state(2, dtype=np.uint64))
    np.testing.assert_array_equal(seed_states(5, 3), np.random.SeedSequence(5).generate_state(3, dtype=np.uint64))
