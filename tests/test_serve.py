"""`fewstep serve` end to end in a real headless Chromium (Debian's package, driven by Selenium),
plus the progress/cancel hook it relies on.

The browser test starts the command on a free loopback port, uploads examples/flower_lr128.png on
the page, waits for the result, lets the browser download it and compares the bytes with what
`fewstep upscale` writes for the same input, model and seed; then it uploads broken and over-limit
files and reads the error messages shown on the page. Set FEWSTEP_SERVE_SCREENSHOT=FILE to save a
screenshot of the page with its result (how docs/serve.png was made).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fewstep import progress
from fewstep.tiling import run_tiled

ROOT = Path(__file__).resolve().parent.parent
FLOWER = ROOT / "examples" / "flower_lr128.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


# ----------------------------------------------------------------------------- progress hook (fast)


def test_progress_reports_tiles_and_cancels_between_tiles():
    x = torch.rand(1, 3, 40, 40)
    seen = []
    reporter = progress.Reporter(lambda frac, label: seen.append(round(frac, 4)))
    calls = []

    def fn(crops, tiles):
        calls.append(len(tiles))
        for k in range(2):  # a fake two-step sampler inside each tile
            progress.tick("step", k + 1, 2)
        return crops

    with progress.reporting(reporter):
        y = run_tiled(x, fn, scale=1, tile=24, overlap=8)  # 2x2 = 4 tiles
    assert torch.allclose(y, x, atol=1e-6)
    assert len(calls) == 4
    # tile starts and ends, with half-tile step ticks in between; monotone; ends at 1
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert 0.125 in seen and 0.375 in seen and 0.5 in seen
    # outside `reporting` the hook is inert
    n = len(seen)
    run_tiled(x, fn, scale=1, tile=24, overlap=8)
    assert len(seen) == n

    # cancel after the first tile: the next tick raises, no further tile runs
    calls.clear()
    reporter = progress.Reporter()

    def fn_cancel(crops, tiles):
        calls.append(1)
        reporter.cancel()
        return crops

    with pytest.raises(progress.Cancelled), progress.reporting(reporter):
        run_tiled(x, fn_cancel, scale=1, tile=24, overlap=8)
    assert calls == [1]


def test_model_adapter_reads_the_registry(monkeypatch, tmp_path):
    """serve/models.py is the page's view of `fewstep.registry`: presence and hints from
    missing_weights, typed options with their defaults, values checked as `--opt` is, and loading
    through registry.load once per (model, options)."""
    from fewstep import registry
    from fewstep.errors import FewstepError
    from fewstep.serve import models as adapter

    monkeypatch.setenv("FEWSTEP_HOME", str(tmp_path / "home"))  # an empty cache: released models are absent
    infos = {m.name: m for m in adapter.list_models(None)}
    assert set(infos) == set(registry.models())
    assert infos["fewstep-small"].present and infos["bicubic"].present
    assert not infos["realsr-v3"].present
    assert f"resshift_realsrx4_s4_v3.pth in {tmp_path / 'home'}" in infos["realsr-v3"].hint
    # with --weights DIR the hints name DIR
    assert f"in {tmp_path}" in {m.name: m for m in adapter.list_models(tmp_path)}["realsr-v3"].hint
    assert infos["inpaint-imagenet"].needs_mask and not infos["fewstep-small"].needs_mask
    steps = {o["name"]: o for o in infos["fewstep-small"].to_json()["options"]}["steps"]
    assert (steps["type"], steps["default"], steps["min"]) == ("int", None, 1)
    # page values -> typed options; defaults are left to the model; bad values are one-line errors
    small = infos["fewstep-small"]
    assert adapter.coerce_options(small, {"steps": "2", "blend": "gaussian", "tile": ""}) == {"steps": 2}
    for bad, text in (({"steps": "x"}, "must be an integer"), ({"steps": 0}, "must be >= 1"),
                      ({"blend": "magic"}, "must be one of gaussian, uniform"), ({"guidance": 1}, "has no option")):
        with pytest.raises(FewstepError, match=re.escape(text)):
            adapter.coerce_options(small, bad)
    loads = []
    monkeypatch.setattr(registry, "load", lambda name, **kw: loads.append((name, kw)) or object())
    cache = adapter.ModelCache(tmp_path, device="cpu")
    m1 = cache.get("fewstep-small", {"steps": 2})
    assert cache.get("fewstep-small", {"steps": 2}) is m1 and len(loads) == 1
    cache.get("fewstep-small", {})
    assert len(loads) == 2
    assert loads[0] == ("fewstep-small", dict(weights=tmp_path, device="cpu", dtype="fp32", quiet=True, steps=2))


# ----------------------------------------------------------------------------- browser test


def _env():
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), FEWSTEP_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _fewstep(*args):
    return [sys.executable, "-c", "from fewstep.cli import main; main()", *args]


def _png_claiming(width: int, height: int, src: Path) -> bytes:
    """A small real PNG whose header claims width x height (a decompression bomb's signature)."""
    data = bytearray(src.read_bytes())
    assert data[12:16] == b"IHDR"
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("no Chromium here (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    # closed network: no first-run, sync, component or background requests that would only fail
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,960", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server():
    # --port 0: the OS picks a free port and the command prints its URL
    # fewstep-small: its 4 sampler steps show the step-by-step progress the test follows
    proc = subprocess.Popen(_fewstep("serve", "--port", "0", "--model", "fewstep-small", "--device", "cpu", "--max-pixels", "100000",
                                     "--max-upload-bytes", "200000"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    url, lines = None, []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if m:
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail("fewstep serve did not print its URL:\n" + "".join(lines))
    yield url, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=20)


def _call(url, path, data=None, ctype="application/json"):
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + path, data=data, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return json.loads(body) if r.headers["Content-Type"] == "application/json" else body
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def test_api_keeps_16bit_and_alpha_and_takes_no_paths(server, tmp_path):
    """Without a browser: a 16-bit RGBA PNG comes back as 16-bit RGBA with the CLI's bytes, and
    nothing the client sends is used as a path."""
    import json

    import cv2

    url, _ = server
    rng = np.random.default_rng(3)
    src = tmp_path / "deep.png"
    bgra = rng.integers(0, 65536, (24, 20, 4), dtype=np.uint16)
    assert cv2.imwrite(str(src), bgra)
    up = _call(url, "/api/upload?name=../../secret/deep.png", src.read_bytes(), "application/octet-stream")
    assert (up["name"], up["width"], up["height"], up["bit_depth"], up["alpha"]) == ("deep.png", 20, 24, 16, True)
    job = _call(url, "/api/jobs", json.dumps({"model": "bicubic", "uploads": [up["id"]]}).encode())
    for _ in range(300):
        job = _call(url, f"/api/jobs/{job['id']}")
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    got = _call(url, job["results"][0]["url"])
    out = cv2.imdecode(np.frombuffer(got, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (96, 80, 4)
    cli_out = tmp_path / "cli"
    subprocess.run(_fewstep("upscale", str(src), "-o", str(cli_out), "-q", "-m", "bicubic"), env=_env(), check=True,
                   capture_output=True)
    assert got == (cli_out / "deep.png").read_bytes()

    # ids, not paths: a path where an upload id belongs is just an unknown upload
    bad = _call(url, "/api/jobs", json.dumps({"model": "bicubic", "uploads": [str(src)]}).encode())
    assert bad["error"] == "an uploaded file expired; upload it again"
    assert _call(url, "/static/..%2F__init__.py")["error"] == "not found"
    assert "unknown model" in _call(url, "/api/jobs", json.dumps({"model": "/tmp/x", "uploads": [up["id"]]}).encode())["error"]


def _wait(driver, cond, timeout=90, what="condition"):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: cond(d))
    except TimeoutException:
        msg = driver.find_element("id", "message").text
        raise AssertionError(f"timed out waiting for {what}; page message: {msg!r}") from None


def _upload(driver, paths):
    driver.find_element("id", "file-input").send_keys("\n".join(str(p) for p in paths))


@pytest.mark.slow
def test_page_result_is_the_cli_png_and_errors_are_shown(browser, server, tmp_path):
    url, proc = server
    driver = browser
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})

    # the CLI reference, computed while the page works (same model, options and seed)
    cli_out = tmp_path / "cli"
    cli = subprocess.Popen(_fewstep("upscale", str(FLOWER), "-o", str(cli_out), "-q", "--seed", "0", "--device", "cpu",
                                    "--model", "fewstep-small"),
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    driver.get(url)
    sel = _wait(driver, lambda d: d.find_element("id", "model").find_elements("tag name", "option"), what="model list")
    by_name = {o.get_attribute("value"): o for o in sel}
    assert by_name["fewstep-small"].get_attribute("selected") is not None
    assert by_name["fewstep-small"].is_enabled() and by_name["bicubic"].is_enabled()
    disabled = [n for n, o in by_name.items() if not o.is_enabled()]
    if disabled:  # models without weights: disabled, with the hint where to put the file
        hints = driver.find_element("id", "model-hint").get_attribute("textContent")
        assert f"{disabled[0]}: put " in hints and " in " in hints
    # the model's options are on the page (with the model's default where it has one)
    assert driver.find_element("id", "opt-steps").get_attribute("placeholder") == "model default"
    assert driver.find_element("id", "opt-blend").get_attribute("value") == "gaussian"

    _upload(driver, [FLOWER])
    _wait(driver, lambda d: d.find_element("id", "run").is_enabled(), what="upload")
    assert "128×128" in driver.find_element("id", "files").text
    t0 = time.monotonic()
    driver.find_element("id", "run").click()
    # the bar follows the sampler: a step label and a fraction strictly between 0 and 1 show up
    midway = _wait(driver, lambda d: re.search(r"(\d+)% · flower_lr128.png: tile 1/1, step [1-3]/4",
                                               d.find_element("id", "status").text), timeout=120, what="progress")
    assert 0 < int(midway.group(1)) < 100
    info = _wait(driver, lambda d: d.find_element("id", "result-info").text or None, timeout=120, what="result")
    page_seconds = time.monotonic() - t0
    assert "512×512" in info
    assert page_seconds < 60, f"the page took {page_seconds:.1f} s for a 128x128 image"
    assert driver.find_element("id", "progress").get_attribute("value") == "1"

    if os.environ.get("FEWSTEP_SERVE_SCREENSHOT"):
        driver.find_element("id", "slider").send_keys(*(["\ue012"] * 10))  # arrow left: show a bit more "after"
        driver.execute_script("document.getElementById('missing').open = true")  # the weight hints
        time.sleep(0.3)
        driver.save_screenshot(os.environ["FEWSTEP_SERVE_SCREENSHOT"])

    driver.find_element("id", "download").click()
    target = downloads / "flower_lr128.png"
    _wait(driver, lambda d: target.is_file() and not list(downloads.glob("*.crdownload")), timeout=30, what="download")
    assert cli.wait(timeout=120) == 0, cli.stdout.read()
    ref = (cli_out / "flower_lr128.png").read_bytes()
    got = target.read_bytes()
    from PIL import Image

    with Image.open(target) as im:
        assert im.size == (512, 512)
    assert got == ref, "the page's PNG differs from fewstep upscale's"

    # bad inputs, all at once: a text file named .png, too many pixels, a bomb header, too many bytes
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image\n")
    wide = tmp_path / "wide.png"
    Image.new("RGB", (400, 400), (200, 120, 40)).save(wide)  # 160000 px > --max-pixels 100000
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(60000, 60000, FLOWER))
    heavy = tmp_path / "heavy.png"
    heavy.write_bytes(np.random.default_rng(0).integers(0, 256, 250_000, dtype=np.uint8).tobytes())
    _upload(driver, [fake, wide, bomb, heavy])
    msg = _wait(driver, lambda d: d.find_element("id", "message").text.count("\n") >= 3 and d.find_element("id", "message").text,
                what="error messages")
    assert "notes.png: not an image file" in msg
    assert "wide.png: image is 400x400 = 160000 pixels, above the limit of 100000" in msg
    assert "bomb.png: image is 60000x60000" in msg
    assert "heavy.png: file is 250000 bytes, above the limit of 200000 bytes" in msg
    assert "Traceback" not in driver.page_source
    assert not driver.find_element("id", "run").is_enabled()

    # drag-and-drop and paste reach the same upload path as the file picker
    import base64

    b64 = base64.b64encode(FLOWER.read_bytes()).decode()
    driver.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));""", b64)
    _wait(driver, lambda d: "dropped.png: 128×128" in d.find_element("id", "files").text, what="drop")
    driver.execute_script("document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: (() => {"
                          "const dt = new DataTransfer(); dt.items.add(new File([Uint8Array.from(atob(arguments[0]), "
                          "(c) => c.charCodeAt(0))], 'pasted.png', {type: 'image/png'})); return dt; })()}))", b64)
    _wait(driver, lambda d: "pasted.png: 128×128" in d.find_element("id", "files").text, what="paste")

    # several files -> a zip of PNGs, here with the fast bicubic model; each equals the CLI's
    flipped = tmp_path / "flipped.png"
    with Image.open(FLOWER) as im:
        im.transpose(Image.FLIP_LEFT_RIGHT).save(flipped)
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "model")).select_by_value("bicubic")
    _upload(driver, [FLOWER, flipped])
    _wait(driver, lambda d: d.find_element("id", "run").is_enabled(), what="two uploads")
    driver.find_element("id", "run").click()
    _wait(driver, lambda d: d.find_element("id", "zip").is_displayed(), timeout=60, what="zip link")
    driver.find_element("id", "zip").click()
    zpath = downloads / "fewstep-results.zip"
    _wait(driver, lambda d: zpath.is_file() and not list(downloads.glob("*.crdownload")), timeout=30, what="zip")
    cli_bic = tmp_path / "cli-bicubic"
    subprocess.run(_fewstep("upscale", str(FLOWER), str(flipped), "-o", str(cli_bic), "-q", "-m", "bicubic"),
                   env=_env(), check=True, capture_output=True)
    with zipfile.ZipFile(zpath) as z:
        assert sorted(z.namelist()) == ["flipped.png", "flower_lr128.png"]
        for name in z.namelist():
            assert z.read(name) == (cli_bic / name).read_bytes(), name

    # one job per device: while a job (sent through the API) runs, the page's job waits with its
    # queue position; cancelling it there works, and so does cancelling the running job
    import json

    def call(path, data=None, ctype="application/json"):
        return _call(url, path, data, ctype)

    up = call("/api/upload?name=flower.png", FLOWER.read_bytes(), "application/octet-stream")
    busy = call("/api/jobs", json.dumps({"model": "fewstep-small", "uploads": [up["id"]], "seed": 1}).encode())
    _wait(driver, lambda d: call(f"/api/jobs/{busy['id']}")["state"] == "running", timeout=60, what="API job start")
    Select(driver.find_element("id", "model")).select_by_value("fewstep-small")
    _upload(driver, [FLOWER])
    _wait(driver, lambda d: d.find_element("id", "run").is_enabled(), what="upload")
    driver.find_element("id", "run").click()
    _wait(driver, lambda d: "position 1" in d.find_element("id", "status").text, timeout=30, what="queue position")
    driver.find_element("id", "cancel").click()
    _wait(driver, lambda d: d.find_element("id", "message").text == "Cancelled.", timeout=30, what="cancel (queued)")
    call(f"/api/jobs/{busy['id']}/cancel", b"")
    t_cancel = time.monotonic()
    _wait(driver, lambda d: call(f"/api/jobs/{busy['id']}")["state"] == "cancelled", timeout=60, what="cancel (running)")
    assert time.monotonic() - t_cancel < 15  # stops at the next sampling step, not at the end

    # the server stops cleanly on SIGTERM
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "fewstep serve: stopped" in out
