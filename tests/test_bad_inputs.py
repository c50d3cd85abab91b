"""A corpus of bad inputs, bad arguments and interruptions against `fewstep upscale`,
`make-testset` and the Python API (issue 12).

Every CLI case asserts the exit status, the one-line message, that no input and no earlier output
changed (the whole tree is hashed before and after) and that the rest of the batch completed.
Most cases run the fast `bicubic` model in-process through `fewstep.cli.main`; the tiny ResShift
fixture (tests/fixtures/resshift) stands in where a model folder is needed, and a copy of the
bundled fewstep-small is corrupted for the sha256 case. Interruption and multi-process runs use
real subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_model_folder
from PIL import Image

import fewstep
from fewstep.errors import FewstepError

SRC = Path(__file__).resolve().parents[1] / "src"


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FEWSTEP_OFFLINE", "1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)


def cli(*args, capsys) -> tuple[int, str]:
    """Run `fewstep ARGS` in this process the way the console script does; (exit status, stderr)."""
    from fewstep import cli as cli_mod

    capsys.readouterr()
    old = sys.argv
    sys.argv = ["fewstep", *map(str, args)]
    try:
        cli_mod.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root (hidden ones too), by relative path."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and "home" not in p.relative_to(root).parts[:1]:
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def unchanged(before: dict[str, str], after: dict[str, str]) -> bool:
    """Every file that existed before is still there with the same bytes."""
    return all(after.get(k) == v for k, v in before.items())


def new_files(before, after) -> set[str]:
    return set(after) - set(before)


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def rgb(path: Path, h=12, w=10, seed=0, mode="RGB", **save):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, **save)
    return path


def bicubic_x4(path: Path) -> np.ndarray:
    """What the bicubic model must write for `path` (8-bit RGB input)."""
    return fewstep.load("bicubic").upscale(np.asarray(Image.open(path).convert("RGB")))


def one_line_error(err: str, *needles: str) -> str:
    errs = errors(err)
    assert len(errs) >= 1 and "Traceback" not in err, err
    hit = [e for e in errs if all(n in e for n in needles)]
    assert hit, f"no error line with {needles}: {err}"
    return hit[0]


@pytest.fixture
def batch(tmp_path) -> Path:
    """in/ with two good images (one in a sub-folder) and out/ with one earlier result."""
    rgb(tmp_path / "in" / "a.png", seed=1)
    rgb(tmp_path / "in" / "sub" / "b.png", seed=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "earlier.png").write_bytes(b"an earlier result")
    return tmp_path


def assert_batch_done(root: Path, before: dict, *, out="out") -> None:
    after = tree(root)
    assert unchanged(before, after)
    assert np.array_equal(np.asarray(Image.open(root / out / "a.png")), bicubic_x4(root / "in" / "a.png"))
    assert np.array_equal(np.asarray(Image.open(root / out / "sub" / "b.png")), bicubic_x4(root / "in" / "sub" / "b.png"))


def refused(root: Path, capsys, *args, needles=(), code=2) -> str:
    """A run that must stop before any work: exit `code`, one error line, nothing written."""
    before = tree(root)
    rc, err = cli("upscale", *args, capsys=capsys)
    assert rc == code, err
    line = one_line_error(err, *needles)
    after = tree(root)
    assert after == before, new_files(before, after)
    return line


# ------------------------------------------------------------------------------- data loss


def test_output_folder_equal_to_input_folder_is_refused(tmp_path, capsys):
    rgb(tmp_path / "same" / "good.png", seed=1)
    rgb(tmp_path / "same" / "good.jpg", seed=2)
    refused(tmp_path, capsys, "same", "-o", "same", "-m", "bicubic", "--overwrite",
            needles=("-o same", "input folder"))


def test_same_stem_files_into_their_own_folder_never_replace_an_input(tmp_path, capsys):
    a = rgb(tmp_path / "same" / "good.png", seed=1)
    b = rgb(tmp_path / "same" / "good.jpg", seed=2)
    before = tree(tmp_path)
    rc, err = cli("upscale", a, b, "-o", "same", "-m", "bicubic", "--overwrite", "-q", capsys=capsys)
    assert rc == 0, err
    assert "2 written, 0 failed, 2 total" in err
    assert unchanged(before, tree(tmp_path))  # good.png is still the input
    assert np.array_equal(np.asarray(Image.open(tmp_path / "same" / "good-png.png")), bicubic_x4(a))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "same" / "good-jpg.png")), bicubic_x4(b))


def test_an_output_that_is_its_own_input_is_refused(tmp_path, capsys):
    rgb(tmp_path / "d" / "x.png")
    refused(tmp_path, capsys, "d/x.png", "-o", "d", "-m", "bicubic", "--overwrite",
            needles=("would replace an input file",))


def test_an_output_that_is_a_link_to_an_input_is_refused(tmp_path, capsys):
    rgb(tmp_path / "in" / "x.png")
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "in" / "x.png", tmp_path / "out" / "x.png")
    refused(tmp_path, capsys, "in", "-o", "out", "-m", "bicubic", "--overwrite", needles=("replace an input",))


@pytest.mark.parametrize("overwrite", [True, False])
def test_two_roots_with_the_same_file_name_both_survive(tmp_path, capsys, overwrite):
    a = rgb(tmp_path / "trip2023" / "IMG_0001.png", seed=1)
    b = rgb(tmp_path / "trip2024" / "IMG_0001.png", seed=2)
    before = tree(tmp_path)
    rc, err = cli("upscale", "trip2023", "trip2024", "-o", "out", "-m", "bicubic", "-q",
                  *(["--overwrite"] if overwrite else []), capsys=capsys)
    assert rc == 0 and "2 written, 0 failed, 2 total" in err, err
    assert unchanged(before, tree(tmp_path))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "trip2023" / "IMG_0001.png")), bicubic_x4(a))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "trip2024" / "IMG_0001.png")), bicubic_x4(b))


def test_two_roots_with_the_same_folder_name_get_distinct_subfolders(tmp_path, capsys):
    rgb(tmp_path / "a" / "photos" / "x.png", seed=1)
    rgb(tmp_path / "b" / "photos" / "x.png", seed=2)
    rc, err = cli("upscale", "a/photos", "b/photos", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 0, err
    assert (tmp_path / "out" / "photos" / "x.png").is_file() and (tmp_path / "out" / "photos-2" / "x.png").is_file()


def test_two_loose_files_with_one_name_are_refused_up_front(tmp_path, capsys):
    rgb(tmp_path / "a" / "x.png", seed=1)
    rgb(tmp_path / "b" / "x.png", seed=2)
    refused(tmp_path, capsys, "a/x.png", "b/x.png", "-o", "out", "-m", "bicubic",
            needles=("would both be written to",))


# ------------------------------------------------------------------------------- silently wrong


def test_output_inside_the_input_is_never_read_back(tmp_path, capsys):
    rgb(tmp_path / "nest" / "a.png")
    rc, err = cli("upscale", "nest", "-o", "nest/out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 0 and "1 written" in err, err
    before = tree(tmp_path)
    rc, err = cli("upscale", "nest", "-o", "nest/out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 0 and "0 written, 1 skipped" in err and "1 total" in err, err
    assert tree(tmp_path) == before and not (tmp_path / "nest" / "out" / "out").exists()


def test_corrupted_model_weights_are_named_not_used(tmp_path, capsys):
    from fewstep.resshift.models import small_model_dir

    model = tmp_path / "model"
    shutil.copytree(small_model_dir(), model)
    data = bytearray((model / "autoencoder.safetensors").read_bytes())
    data[-100] ^= 0xFF  # one flipped byte among the weights
    (model / "autoencoder.safetensors").write_bytes(bytes(data))
    rgb(tmp_path / "in" / "a.png")
    line = refused(tmp_path, capsys, "in", "-o", "out", "-m", model, needles=("autoencoder.safetensors", "sha256 mismatch"))
    assert str(model) in line
    assert not (tmp_path / "out" / "a.png").exists()


def test_verified_hashes_are_remembered_and_rechecked_when_the_file_changes(tmp_path):
    from fewstep.weights import verify_sha256

    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 1000)
    good = hashlib.sha256(f.read_bytes()).hexdigest()
    verify_sha256(f, good)
    cache = json.loads((tmp_path / "home" / "verified_sha256.json").read_text())
    assert cache[os.path.realpath(f)]["sha256"] == good
    f.write_bytes(b"Weights" * 1000)  # same size, new mtime: hashed again, and caught
    os.utime(f, ns=(1, 1))
    with pytest.raises(FewstepError, match=r"w\.bin: sha256 mismatch"):
        verify_sha256(f, good)


# ------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("args, needles", [
    (["--tile", "16", "--tile-overlap", "16"], ("--tile-overlap 16 must be smaller than --tile 16",)),
    (["--tile", "32", "--tile-overlap", "40"], ("--tile-overlap 40",)),
    (["--tile", "1"], ("--tile 1: too small",)),
    (["--tile", "abc"], ("--tile must be a number",)),
    (["--tile", "-5"], ("--tile must be >= 0",)),
    (["--tile-overlap", "-1"], ("--tile-overlap must be >= 0",)),
    (["--steps", "0"], ("--steps must be >= 1",)),
    (["--device", "banana"], ("--device 'banana': not a device",)),
    (["--device", "meta"], ("meta devices are not supported",)),
    (["--dtype", "fp8"], ("--dtype must be fp32, bf16 or fp16",)),
    (["--blend", "soft"], ("--blend must be gaussian or uniform",)),
    (["--ext", "xyz"], ("--ext 'xyz': not an output format",)),
    (["--suffix", "a/b"], ("--suffix",)),
    (["--mask", "no-such-mask.png"], ("--mask no-such-mask.png: no such file",)),
    (["-m", "no-such-model"], ("unknown model 'no-such-model'",)),
    (["--opt", "bogus=1"], ("model 'bicubic' has no option bogus",)),
])
def test_bad_arguments_are_one_line_before_any_work(batch, capsys, args, needles):
    refused(batch, capsys, "in", "-o", "out", *(["-m", "bicubic"] if "-m" not in args else []), *args,
            needles=needles)


def test_cuda_on_a_build_without_cuda_says_so(batch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused(batch, capsys, "in", "-o", "out", "-m", "bicubic", "--device", "cuda",
            needles=("--device cuda", "CUDA"))


def test_fp16_on_cpu_is_refused(batch, capsys):
    refused(batch, capsys, "in", "-o", "out", "-m", "bicubic", "--device", "cpu", "--dtype", "fp16",
            needles=("--dtype fp16 is for GPUs",))


def test_bf16_on_a_cpu_without_it_warns_about_the_slowdown_and_runs(batch, capsys, monkeypatch):
    monkeypatch.setattr("fewstep.distributed.cpu_has_native_bf16", lambda: False)
    model = tiny_model(batch)  # a model that declares bf16 (bicubic is fp32 only)
    before = tree(batch)
    rc, err = cli("upscale", "in", "-o", "out", "-m", str(model), "--device", "cpu", "--dtype", "bf16", "-q",
                  capsys=capsys)
    assert rc == 0, err
    warn = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "slower than fp32" in warn[0]
    assert unchanged(before, tree(batch))
    for name, src in (("a.png", "in/a.png"), ("sub/b.png", "in/sub/b.png")):
        w, h = Image.open(batch / src).size
        assert Image.open(batch / "out" / name).size == (4 * w, 4 * h)


def test_a_dtype_the_model_does_not_declare_is_one_line(batch, capsys):
    refused(batch, capsys, "in", "-o", "out", "-m", "bicubic", "--device", "cpu", "--dtype", "bf16",
            needles=("bicubic", "dtype bf16", "fp32"))


def test_model_default_overlap_larger_than_the_tile_is_refused_before_any_image(tmp_path, capsys):
    model = tiny_model(tmp_path)  # its default overlap is 16
    rgb(tmp_path / "in" / "a.png")
    refused(tmp_path, capsys, "in", "-o", "out", "-m", model, "--tile", "16",
            needles=("--tile 16", "overlap 16"))


def test_steps_beyond_the_model_are_refused(tmp_path, capsys):
    model = tiny_model(tmp_path)
    rgb(tmp_path / "in" / "a.png")
    refused(tmp_path, capsys, "in", "-o", "out", "-m", model, "--steps", "99", needles=("steps must be between 1 and 4",))


def test_output_that_is_a_file_is_refused(batch, capsys):
    (batch / "file.txt").write_text("x")
    refused(batch, capsys, "in", "-o", "file.txt", "-m", "bicubic", needles=("-o file.txt: is a file",))


def test_output_below_a_file_cannot_be_created(batch, capsys):
    (batch / "file.txt").write_text("x")
    refused(batch, capsys, "in", "-o", "file.txt/sub", "-m", "bicubic", needles=("cannot create the output folder",))


def test_unwritable_output_folder_is_refused(batch, capsys):
    if os.geteuid() == 0:  # root writes anywhere on a normal file system; /proc refuses even root
        if not Path("/proc/self").is_dir():
            pytest.skip("needs /proc or a non-root user")
        target = "/proc/self"
    else:
        target = batch / "ro"
        target.mkdir()
        target.chmod(0o500)
    refused(batch, capsys, "in", "-o", target, "-m", "bicubic", needles=("not writable",))


def test_missing_input_and_empty_folder(batch, capsys):
    refused(batch, capsys, "nope.png", "-o", "out", "-m", "bicubic", needles=("nope.png: no such file",))
    (batch / "empty").mkdir()
    refused(batch, capsys, "empty", "-o", "out", "-m", "bicubic", needles=("no images found in empty",))


def test_bad_model_folder_json(batch, capsys):
    (batch / "m").mkdir()
    (batch / "m" / "fewstep_model.json").write_text("{not json")
    refused(batch, capsys, "in", "-o", "out", "-m", batch / "m", needles=("fewstep_model.json", "invalid model card"))


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    model = tiny_model(tmp_path)
    torch.save({"state_dict": Evil()}, model / "unet.pth")
    rgb(tmp_path / "in" / "a.png")
    refused(tmp_path, capsys, "in", "-o", "out", "-m", model, needles=("unet.pth: cannot read checkpoint",))
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------- bad files


def huge_png_header(path: Path, w=100_000, h=100_000) -> None:
    """A PNG whose header claims w x h pixels (a decompression bomb; no pixel data is needed)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _write_bad(kind: str, p: Path) -> None:
    if kind == "corrupt":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not an image\n")
    elif kind == "truncated":
        rgb(p, 64, 64, format="JPEG")
        data = p.read_bytes()
        p.write_bytes(data[: len(data) * 2 // 3])  # header intact, pixel data cut
    elif kind == "bomb":
        huge_png_header(p)


@pytest.mark.parametrize("kind, name, needle", [
    ("corrupt", "bad.png", "bad.png"),
    ("empty", "bad.jpg", "empty file"),
    ("text", "bad.png", "not an image"),
    ("truncated", "bad.jpg", "truncated or corrupt"),
    ("bomb", "bad.png", "above the limit"),
])
def test_a_bad_file_is_reported_and_the_batch_goes_on(batch, capsys, kind, name, needle):
    _write_bad(kind, batch / "in" / name)
    before = tree(batch)
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 1, err
    one_line_error(err, name, needle)
    assert len(errors(err)) == 1
    assert "2 written, 1 failed, 3 total" in err
    assert_batch_done(batch, before)


def test_an_output_path_taken_by_a_folder_fails_only_that_image(batch, capsys):
    (batch / "out" / "a.png").mkdir(parents=True)
    rgb(batch / "in" / "c.png", seed=3)
    before = tree(batch)
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 1, err
    one_line_error(err, "a.png", "is a folder")
    assert "2 written, 1 failed, 3 total" in err
    assert unchanged(before, tree(batch)) and (batch / "out" / "c.png").is_file() and (batch / "out" / "sub" / "b.png").is_file()


@pytest.mark.parametrize("kind", ["rgb16", "cmyk", "exif", "palette_alpha", "gray"])
def test_unusual_but_valid_inputs_are_handled(tmp_path, capsys, kind):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    if kind == "rgb16":
        import cv2

        cv2.imwrite(str(src / "x.png"), rng.integers(0, 65536, (10, 12, 3), dtype=np.uint16))
    elif kind == "cmyk":
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).convert("CMYK").save(src / "x.jpg")
    elif kind == "exif":
        im = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
        exif = im.getexif()
        exif[0x0112] = 6  # rotate 90: the upright image is 12 high, 10 wide
        im.save(src / "x.jpg", exif=exif)
    elif kind == "palette_alpha":
        im = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).convert("P")
        im.info["transparency"] = 0
        im.save(src / "x.png", transparency=0)
    else:
        Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8), "L").save(src / "x.png")
    before = tree(tmp_path)
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 0 and "1 written, 0 failed" in err, err
    assert unchanged(before, tree(tmp_path))
    with Image.open(tmp_path / "out" / "x.png") as im:
        size = {"exif": (40, 48)}.get(kind, (48, 40))
        assert im.size == size
        mode = {"rgb16": None, "palette_alpha": "RGBA"}.get(kind, "RGB")
        if kind == "rgb16":
            import cv2

            assert cv2.imread(str(tmp_path / "out" / "x.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
        else:
            assert im.mode == mode


# ------------------------------------------------------------------------------- resume, logs, errors


def test_rerun_that_only_skips_exits_0_and_changes_nothing(batch, capsys):
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 0 and "2 written" in err
    before = tree(batch)
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 0 and "0 written, 2 skipped" in err and not errors(err), err
    assert tree(batch) == before


def test_existing_output_is_kept_and_the_rest_is_written(batch, capsys):
    (batch / "out" / "a.png").write_bytes(b"mine")
    before = tree(batch)
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 0 and "1 written, 1 skipped" in err, err
    assert unchanged(before, tree(batch)) and (batch / "out" / "a.png").read_bytes() == b"mine"
    assert np.array_equal(np.asarray(Image.open(batch / "out" / "sub" / "b.png")), bicubic_x4(batch / "in" / "sub" / "b.png"))


def test_temp_files_of_a_killed_run_are_removed_by_the_next(batch, capsys):
    stale = batch / "out" / "sub" / ".b.png.0123456789ab.tmp"
    foreign = batch / "out" / ".notours.png.0123456789ab.tmp"  # no job of this run writes notours.png
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a png")
    foreign.write_bytes(b"someone else's")
    before = tree(batch)
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 0, err
    assert not stale.exists() and foreign.read_bytes() == b"someone else's"
    del before["out/sub/.b.png.0123456789ab.tmp"]
    assert_batch_done(batch, before)


def test_log_has_one_json_line_per_image(batch, capsys):
    _write_bad("corrupt", batch / "in" / "bad.png")
    (batch / "out" / "a.png").write_bytes(b"done before")
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", "--seed", "7", "--log", "run.jsonl", capsys=capsys)
    assert rc == 1
    lines = [json.loads(x) for x in (batch / "run.jsonl").read_text().splitlines()]
    assert {Path(x["input"]).name: x["status"] for x in lines} == {"a.png": "skipped", "bad.png": "failed", "b.png": "written"}
    for x in lines:
        assert x["seed"] == 7 and x["model"] == "bicubic" and x["seconds"] >= 0 and "output" in x
    assert "bad.png" in [x for x in lines if x["status"] == "failed"][0]["error"]


def test_an_unexpected_error_in_one_image_is_one_line_with_a_traceback_file(batch, capsys, monkeypatch):
    import fewstep.imageio as io

    real = io.read_image

    def flaky(path, **kw):
        if Path(path).name == "a.png":
            raise TypeError("boom inside a decoder")
        return real(path, **kw)

    monkeypatch.setattr(io, "read_image", flaky)
    before = tree(batch)
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 1
    line = one_line_error(err, "a.png", "internal error TypeError: boom inside a decoder", "traceback in")
    log = Path(line.split("traceback in ")[1].split(" (")[0])
    assert log.is_file() and "boom inside a decoder" in log.read_text() and "Traceback" in log.read_text()
    assert "1 written, 1 failed" in err and unchanged(before, tree(batch))
    assert (batch / "out" / "sub" / "b.png").is_file()
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", "--debug", capsys=capsys)
    assert rc == 1 and "Traceback (most recent call last)" in err  # --debug shows it


def test_an_unexpected_error_outside_the_images_exits_3_with_one_line(batch, capsys, monkeypatch):
    def broken(*a, **k):
        raise ZeroDivisionError("bug while loading")

    monkeypatch.setattr("fewstep.commands.upscale._load_model", broken)
    before = tree(batch)
    rc, err = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)
    assert rc == 3
    one_line_error(err, "internal error ZeroDivisionError: bug while loading", "traceback in")
    assert tree(batch) == before


def _bicubic_batch(root: Path, n: int, size: int) -> None:
    for i in range(n):
        rgb(root / "in" / f"{i:02d}.png", size, size, seed=i)


def _run(*args, env=None, **kw) -> subprocess.Popen:
    e = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    # a shell without job control starts background jobs with SIGINT ignored, and children inherit
    # that (Python then never raises KeyboardInterrupt): give the child the default disposition
    return subprocess.Popen([sys.executable, "-m", "fewstep", *map(str, args)], stderr=subprocess.PIPE, text=True,
                            env=e, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def test_ctrl_c_reports_progress_exits_130_and_the_rerun_completes_identically(tmp_path, capsys):
    n = 8
    _bicubic_batch(tmp_path, n, 256)  # big enough that writing each 4x PNG takes a noticeable time
    p = _run("upscale", "in", "-o", "out", "-m", "bicubic", "-q", cwd=tmp_path)
    t0 = time.time()
    while not list((tmp_path / "out").glob("*.png")) and time.time() - t0 < 120:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and " not started" in lines[0], err
    written = int(lines[0].split()[1])
    not_started = int(lines[0].split(", ")[1].split()[0])
    assert written >= 1 and not_started >= 1 and written + not_started <= n
    done = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.png")}
    assert len(done) == written
    rc, err2 = cli("upscale", "in", "-o", "out", "-m", "bicubic", "-q", capsys=capsys)  # resume
    assert rc == 0 and f"{written} skipped" in err2, err2
    for name, data in done.items():  # nothing finished was touched
        assert (tmp_path / "out" / name).read_bytes() == data
    for i in range(n):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"{i:02d}.png")),
                              bicubic_x4(tmp_path / "in" / f"{i:02d}.png"))
    assert not list((tmp_path / "out").glob(".*.tmp"))


# torchrun starts each rank with OMP_NUM_THREADS=1; float sums (and so VQ code choices) depend on the
# thread count, so the one-process reference and the ranks run in this process use one thread too
@pytest.mark.usefixtures("one_thread")
def test_two_processes_under_torchrun_write_the_same_bytes_as_one(tmp_path, capsys):
    model = tiny_model(tmp_path)
    for i in range(3):
        rgb(tmp_path / "in" / ("sub" if i % 2 else "") / f"{i}.png", 20, 24, seed=i)
    rc, err = cli("upscale", "in", "-o", "one", "-m", model, "-q", capsys=capsys)
    assert rc == 0, err
    e = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0",
                "-m", "fewstep", "upscale", "in", "-o", "two", "-m", str(model), "-q", "--log-jsonl", "two.jsonl"]
    r = subprocess.run(torchrun, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "[rank 0/2] 2 written" in r.stderr and "[rank 1/2] 1 written" in r.stderr
    assert tree(tmp_path / "one") == tree(tmp_path / "two") and len(tree(tmp_path / "one")) == 3
    ranks = {json.loads(x)["input"]: json.loads(x)["rank"] for x in (tmp_path / "two.jsonl").read_text().splitlines()}
    assert sorted(ranks.values()) == [0, 0, 1]
    # each rank resumes its own share: rank 1's output is removed, only rank 1 redoes it
    (tmp_path / "two" / "2.png").unlink()  # plan order 0.png, 2.png, sub/1.png: rank 1 owns 2.png
    for rank, expect in ((0, "0 written, 2 skipped"), (1, "1 written")):
        env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        rc, err = cli_env(env, "upscale", "in", "-o", "two", "-m", model, "-q", capsys=capsys)
        assert rc == 0 and f"[rank {rank}/2] {expect}" in err, err
    assert tree(tmp_path / "one") == tree(tmp_path / "two")


def cli_env(env: dict, *args, capsys):
    """`cli` with RANK/WORLD_SIZE/LOCAL_RANK from `env` (what a launcher sets for each process)."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    try:
        return cli(*args, capsys=capsys)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_plan_shares_split_the_jobs_exactly_once(tmp_path):
    from fewstep.batch import plan_batch

    for i in range(7):
        rgb(tmp_path / "in" / f"{i}.png")
    plan = plan_batch(["in"], "out")
    shares = [plan.share(r, 3) for r in range(3)]
    assert sorted(j.index for s in shares for j in s) == list(range(7))
    assert [len(s) for s in shares] == [3, 2, 2]


def test_inconsistent_rank_environment_is_one_line(batch, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    refused(batch, capsys, "in", "-o", "out", "-m", "bicubic", needles=("RANK=5", "inconsistent"))


# ------------------------------------------------------------------------------- make-testset


def test_make_testset_skips_bad_hr_files_and_reports_them(tmp_path, capsys):
    for i in range(3):
        rgb(tmp_path / "hr" / f"{i}.png", 32, 32, seed=i)
    _write_bad("corrupt", tmp_path / "hr" / "1.png")
    (tmp_path / "hr" / "tiny.png").unlink(missing_ok=True)
    rgb(tmp_path / "hr" / "tiny.png", 2, 2)
    before = tree(tmp_path)
    rc, err = cli("make-testset", "hr", "ts", "--preset", "bicubic", "-q", capsys=capsys)
    assert rc == 1, err
    skipped = [line for line in err.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 2 and any("1.png" in s for s in skipped) and any("smaller than the scale" in s for s in skipped)
    assert unchanged(before, tree(tmp_path))
    assert sorted(p.name for p in (tmp_path / "ts" / "hr").iterdir()) == ["0.png", "2.png"]
    meta = json.loads((tmp_path / "ts" / "testset.json").read_text())
    assert [s["source"] for s in meta["skipped"]] == ["1.png", "tiny.png"]
    # the seeds of the good images do not depend on the skipped ones
    full = np.random.SeedSequence(0).generate_state(4, dtype=np.uint64) >> 2
    assert [m["seed"] for m in meta["images"]] == [int(full[0]), int(full[2])]
    assert not list(tmp_path.glob(".ts.tmp-*"))


def test_make_testset_interrupted_leaves_nothing_and_the_rerun_works(tmp_path, capsys, monkeypatch):
    for i in range(2):
        rgb(tmp_path / "hr" / f"{i}.png", 32, 32, seed=i)
    import fewstep.degrade.pipeline as pipe

    real = pipe.degrade
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipe, "degrade", interrupted)
    before = tree(tmp_path)
    rc, err = cli("make-testset", "hr", "ts", "--preset", "bicubic", "-q", capsys=capsys)
    assert rc == 130 and err.strip().startswith("interrupted:"), err
    assert tree(tmp_path) == before and not (tmp_path / "ts").exists() and not list(tmp_path.glob(".ts.*"))
    # a temp folder left by a hard kill is removed by the next run, which completes
    (tmp_path / ".ts.tmp-deadbeef" / "hr").mkdir(parents=True)
    monkeypatch.setattr(pipe, "degrade", real)
    rc, err = cli("make-testset", "hr", "ts", "--preset", "bicubic", "-q", capsys=capsys)
    assert rc == 0, err
    assert len(list((tmp_path / "ts" / "lr").iterdir())) == 2 and not list(tmp_path.glob(".ts.*"))


def test_make_testset_refuses_a_non_empty_output_and_all_bad_inputs(tmp_path, capsys):
    rgb(tmp_path / "hr" / "0.png", 32, 32)
    (tmp_path / "ts").mkdir()
    (tmp_path / "ts" / "keep.txt").write_text("mine")
    before = tree(tmp_path)
    rc, err = cli("make-testset", "hr", "ts", "--preset", "bicubic", "-q", capsys=capsys)
    assert rc == 2 and "not empty" in one_line_error(err) and tree(tmp_path) == before
    _write_bad("empty", tmp_path / "hr" / "0.png")
    before = tree(tmp_path)
    rc, err = cli("make-testset", "hr", "ts2", "--preset", "bicubic", "-q", capsys=capsys)
    assert rc == 2 and "none of the 1 images" in one_line_error(err)
    assert tree(tmp_path) == before and not (tmp_path / "ts2").exists()


# ------------------------------------------------------------------------------- Python API


@pytest.fixture(scope="module")
def up():
    return fewstep.load("bicubic")


def _u8(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("make, match", [
    (lambda: _u8().astype(np.float32), r"values 0\.\.2\d\d are outside the range 0\.\.1 .*value_range=\(0, 255\)"),
    (lambda: _u8().astype(np.int64), r"dtype int64: say what its numbers mean"),
    (lambda: _u8().tolist(), r"dtype int64"),
    (lambda: np.full((4, 4, 3), np.nan, np.float32), r"NaN or infinite"),
    (lambda: np.full((4, 4, 3), np.inf), r"NaN or infinite"),
    (lambda: np.zeros((0, 4, 3), np.uint8), r"empty image"),
    (lambda: np.zeros((4, 4, 5), np.uint8), r"HxWx3"),
    (lambda: np.zeros((4, 4, 3), bool), r"not a number type"),
    (lambda: [[1, 2], [3]], r"cannot read the image as an array"),
    (lambda: torch.zeros(4, 4, 3), r"\(3,H,W\)"),
    (lambda: -np.ones((4, 4, 3), np.float32), r"outside the range 0\.\.1"),
])
def test_api_refuses_ambiguous_or_broken_input(up, make, match):
    x = make()
    copy = x.clone() if isinstance(x, torch.Tensor) else json.dumps(x) if isinstance(x, list) else x.copy()
    with pytest.raises(FewstepError, match=match):
        up.upscale(x)
    if isinstance(x, np.ndarray):  # the caller's data is not modified
        assert np.array_equal(x, copy, equal_nan=True)


def test_api_keeps_kind_dtype_and_range(up):
    a = _u8()
    ref = up.upscale(a)
    assert ref.dtype == np.uint8 and ref.shape == (24, 20, 3)
    f = up.upscale(a.astype(np.float32) / 255)
    assert f.dtype == np.float32 and np.abs(f * 255 - ref).max() <= 0.5 + 1e-3
    u16 = up.upscale(a.astype(np.uint16) * 257)
    assert u16.dtype == np.uint16 and np.abs(u16 / 257.0 - ref).max() <= 0.51
    r = up.upscale(a.astype(np.float32), value_range=(0, 255))
    assert r.dtype == np.float32 and r.max() > 1.5 and np.abs(r - ref).max() <= 0.5 + 1e-3
    lst = up.upscale(a.tolist(), value_range=(0, 255))
    assert np.array_equal(lst, ref)
    t = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    yt = up.upscale(t)
    assert isinstance(yt, torch.Tensor) and yt.shape == (3, 24, 20) and yt.dtype == torch.float32
    assert up.upscale(t[None]).shape == (1, 3, 24, 20)
    pil = up.upscale(Image.fromarray(a))
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), ref)
    gray = up.upscale(a[..., 0])
    assert gray.shape == (24, 20, 3)


def tiny_model(root: Path) -> Path:
    """A model folder holding the official-format tiny ResShift fixture (default tile 64, overlap 16)."""
    return write_tiny_model_folder(root / "tiny_model")


def test_each_rank_gets_its_own_gpu(monkeypatch):
    """cuda:LOCAL_RANK (mod the GPU count) under a launcher; a CUDA index that does not exist is one line.
    The CUDA runtime is simulated: this checks the mapping, not a GPU."""
    from fewstep.distributed import resolve_device

    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", 1, 2) == "cuda:1"
    assert resolve_device("cuda", 3, 4) == "cuda:1"
    assert resolve_device("cuda", 0, 1) == "cuda:0"
    assert resolve_device("cuda:1", 0, 2) == "cuda:1"  # an explicit index is kept
    with pytest.raises(FewstepError, match=r"--device cuda:5: only 2 CUDA device\(s\) visible"):
        resolve_device("cuda:5")
