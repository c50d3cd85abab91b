"""Weight resolution: local folders, the cache, downloads (over loopback) and offline errors."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from fewstep.errors import FewstepError, WeightsNotFoundError
from fewstep.weights import WeightFile, cache_dir, resolve

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.endswith("/good.pth"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path.endswith("/truncated.pth"):  # promises 1 MiB, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def fewstep_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FEWSTEP_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_local_folder_then_cache_then_download(tmp_path, server):
    wf = WeightFile("good.pth", server + "/good.pth", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    local = tmp_path / "mine"
    local.mkdir()
    (local / "good.pth").write_bytes(b"user copy")
    with pytest.raises(FewstepError, match=r"good\.pth: sha256 mismatch"):  # a known hash is checked
        resolve(wf, local)
    (local / "good.pth").write_bytes(PAYLOAD)
    assert resolve(wf, local) == local / "good.pth"  # an explicit folder wins
    got = resolve(wf, quiet=True)  # not cached yet: downloaded
    assert got == cache_dir() / "good.pth" and got.read_bytes() == PAYLOAD
    assert not list(cache_dir().glob("*.part"))
    assert resolve(wf, download=False) == got  # now found in the cache


def test_download_into_a_given_folder(tmp_path, server):
    wf = WeightFile("good.pth", server + "/good.pth", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    got = resolve(wf, tmp_path / "mine", into=tmp_path / "mine", quiet=True)
    assert got == tmp_path / "mine" / "good.pth" and got.read_bytes() == PAYLOAD
    assert not (cache_dir() / "good.pth").exists()


def test_interrupted_download_leaves_no_weight_file(server):
    """Was: the error named the deleted `.part` file (FileNotFoundError) instead of the short read."""
    wf = WeightFile("truncated.pth", server + "/truncated.pth")
    with pytest.raises(WeightsNotFoundError) as e:
        resolve(wf, quiet=True)
    msg = str(e.value)
    assert msg.startswith(f"weights not found: put truncated.pth in {cache_dir()}")
    assert f"incomplete download of truncated.pth: {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes" in msg
    assert "FileNotFoundError" not in msg and ".part" not in msg
    assert not (cache_dir() / "truncated.pth").exists() and not list(cache_dir().glob("*.part"))


def test_checksum_mismatch_is_rejected(server):
    wf = WeightFile("good.pth", server + "/good.pth", sha256="0" * 64)
    with pytest.raises(WeightsNotFoundError, match="checksum mismatch"):
        resolve(wf, quiet=True)
    assert not (cache_dir() / "good.pth").exists()


def test_offline_names_file_folder_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_OFFLINE", "1")
    wf = WeightFile("resshift_realsrx4_s4_v3.pth", "https://example.invalid/resshift_realsrx4_s4_v3.pth")
    with pytest.raises(WeightsNotFoundError) as e:
        resolve(wf, tmp_path / "w")
    msg = str(e.value)
    assert msg.startswith(f"weights not found: put resshift_realsrx4_s4_v3.pth in {tmp_path / 'w'} ")
    assert "example.invalid" in msg and "\n" not in msg


def test_release_aliases_are_found(tmp_path):
    from fewstep.resshift.presets import PRESETS

    wf = PRESETS["inpaint-imagenet"]["unet_file"]
    assert wf.filename == "resshift_inpaint_imagenet_s4.pth"
    assert wf.url.endswith("/v2.0/resshift_inpainting_imagenet_s4.pth")
    (tmp_path / "resshift_inpainting_imagenet_s4.pth").write_bytes(b"x")  # saved under the URL's name
    assert resolve(wf, tmp_path, download=False) == tmp_path / "resshift_inpainting_imagenet_s4.pth"


@pytest.mark.parametrize("value, offline", [("1", True), ("yes", True), ("0", False), ("", False),
                                             ("false", False), ("off", False)])
def test_one_meaning_of_the_offline_switch(monkeypatch, value, offline):
    from fewstep import weights

    monkeypatch.setenv("FEWSTEP_OFFLINE", value)
    assert weights.offline() is offline
    monkeypatch.setenv("FEWSTEP_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert weights.offline() is offline


def test_offline_switch_zero_means_online(server, monkeypatch):
    """FEWSTEP_OFFLINE=0 must not block downloads (it used to in the S3Diff SD-Turbo path)."""
    monkeypatch.setenv("FEWSTEP_OFFLINE", "0")
    wf = WeightFile("good.pth", server + "/good.pth", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert resolve(wf, quiet=True).read_bytes() == PAYLOAD


def test_hub_folder_offline_says_put_folder_in_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    wf = WeightFile("sd-turbo", hub_repo="stabilityai/sd-turbo")
    with pytest.raises(WeightsNotFoundError) as e:
        resolve(wf, tmp_path / "w")
    assert str(e.value).startswith(f"weights not found: put sd-turbo in {tmp_path / 'w'} ")
    assert "stabilityai/sd-turbo" in str(e.value)
    (tmp_path / "w" / "sd-turbo").mkdir(parents=True)  # a folder in --weights is found
    assert resolve(wf, tmp_path / "w") == tmp_path / "w" / "sd-turbo"


def test_weights_list_shows_every_file_of_every_model(tmp_path):
    """Was: `fewstep weights list` did not list S3Diff's files."""
    import subprocess
    import sys

    from fewstep import registry

    r = subprocess.run([sys.executable, "-m", "fewstep.cli", "weights", "list", "--weights", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for name in ("s3diff.pkl", "de_net.pth", "sd-turbo", "stabilityai/sd-turbo", "resshift_realsrx4_s4_v3.pth"):
        assert name in out
    for name, spec in registry.models().items():
        assert f"\n{name} " in "\n" + out
        for wf in spec.weights:
            assert wf.name in out
    (tmp_path / "s3diff.pkl").write_bytes(b"x")
    r = subprocess.run([sys.executable, "-m", "fewstep.cli", "weights", "list", "s3diff", "--weights", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert f"ok      s3diff.pkl  ({tmp_path / 's3diff.pkl'})" in r.stdout
    assert "missing de_net.pth" in r.stdout and "color_fix=wavelet" in r.stdout
