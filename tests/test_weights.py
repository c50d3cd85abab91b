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


def test_interrupted_download_leaves_no_weight_file(server):
    wf = WeightFile("truncated.pth", server + "/truncated.pth")
    with pytest.raises(WeightsNotFoundError, match="put truncated.pth in .*download from .* failed"):
        resolve(wf, quiet=True)
    assert not (cache_dir() / "truncated.pth").exists()


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
