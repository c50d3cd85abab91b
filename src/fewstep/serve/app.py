"""The HTTP side of `fewstep serve`: a static page plus a small JSON API, on the standard library.

Why not gradio: the page needs a few things gradio does not give directly: disabled entries in the
model list (with the "put FILE in DIR" hint), upload limits enforced from the Content-Length
before the body is read, the download served as the exact bytes the CLI writes, and no requests
leaving the machine (gradio's default theme loads web fonts, its launcher checks for updates).
With `http.server` the app needs no extra dependency, and the API below is all a page needs:

  GET  /                          the page (static/index.html, app.js, style.css)
  GET  /api/models                models, their options/defaults, presence, hints; limits
  POST /api/upload?name=N         raw file bytes -> {id, width, height, ...} or {error}
  GET  /api/uploads/ID            the uploaded bytes (the slider's "before" image)
  POST /api/jobs                  {model, options, seed, uploads:[ids]} -> job
  GET  /api/jobs/ID               state, queue position, progress, results
  POST /api/jobs/ID/cancel
  GET  /api/jobs/ID/file/I        result PNG (attachment)
  GET  /api/jobs/ID/zip           all results of a multi-file job

Clients never send paths: uploads are bytes, everything else is referred to by random ids.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import FewstepError

STATIC = Path(__file__).resolve().parent / "static"
_STATIC_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                 "style.css": "text/css; charset=utf-8"}


class App:
    """State shared by all request threads."""

    def __init__(self, manager, models: list, *, default_model: str, max_bytes: int, max_pixels: int,
                 max_files: int, device: str):
        self.manager, self.models = manager, models
        self.default_model, self.max_bytes, self.max_pixels = default_model, max_bytes, max_pixels
        self.max_files, self.device = max_files, device


class Handler(BaseHTTPRequestHandler):
    server_version = "fewstep-serve"
    app: App  # set on the subclass made by make_server

    # quiet access log: one line per API call that changes something
    def log_message(self, fmt, *args):
        if self.command == "POST":
            super().log_message(fmt, *args)

    # ------------------------------------------------------------------------------ responses

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, message: str, status: int = 400) -> None:
        self._json({"error": message}, status)

    def _body(self) -> bytes | None:
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error("missing Content-Length", HTTPStatus.LENGTH_REQUIRED)
            return None
        if n > self.app.max_bytes:
            # refuse before reading; the connection is closed so the unread body is discarded
            self.close_connection = True
            self._error(f"file is {n} bytes, above the limit of {self.app.max_bytes} bytes (--max-upload-bytes)",
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return None
        return self.rfile.read(n) if n > 0 else b""

    # -------------------------------------------------------------------------------- routing

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path
        try:
            if method == "GET" and path in ("/", "/index.html"):
                return self._static("index.html")
            if method == "GET" and path.startswith("/static/"):
                return self._static(path[len("/static/"):])
            if method == "GET" and path == "/api/models":
                return self._models()
            if method == "POST" and path == "/api/upload":
                return self._upload(parse_qs(url.query).get("name", ["image"])[0])
            if method == "POST" and path == "/api/jobs":
                return self._submit()
            m = re.fullmatch(r"/api/uploads/([0-9a-f]{32})", path)
            if method == "GET" and m:
                up = self.app.manager.uploads.get(m.group(1))
                if up is None:
                    return self._error("no such upload", 404)
                return self._send(200, up.path.read_bytes(), "application/octet-stream")
            m = re.fullmatch(r"/api/jobs/([0-9a-f]{32})(?:/(cancel|zip|file/(\d+)))?", path)
            if m:
                job = self.app.manager.jobs.get(m.group(1))
                if job is None:
                    return self._error("no such job (it may have expired)", 404)
                action = m.group(2)
                if method == "GET" and action is None:
                    return self._json(self.app.manager.job_json(job))
                if method == "POST" and action == "cancel":
                    self.app.manager.cancel(job)
                    return self._json(self.app.manager.job_json(job))
                if method == "GET" and action == "zip":
                    return self._send(200, self.app.manager.zip_bytes(job), "application/zip",
                                      {"Content-Disposition": 'attachment; filename="fewstep-results.zip"'})
                if method == "GET" and m.group(3) is not None:
                    i = int(m.group(3))
                    if i >= len(job.results) or job.results[i].error:
                        return self._error("no such result", 404)
                    r = job.results[i]
                    return self._send(200, r.path.read_bytes(), "image/png",
                                      {"Content-Disposition": f'attachment; filename="{r.name}"'})
            return self._error("not found", 404)
        except FewstepError as e:
            return self._error(str(e))
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            import traceback

            traceback.print_exc()
            return self._error(f"internal error: {e.__class__.__name__}", 500)

    def _static(self, name: str) -> None:
        if name not in _STATIC_TYPES:  # a fixed list: no path from the client reaches the disk
            return self._error("not found", 404)
        self._send(200, (STATIC / name).read_bytes(), _STATIC_TYPES[name])

    def _models(self) -> None:
        a = self.app
        self._json({"models": [m.to_json() for m in a.models], "default": a.default_model,
                    "limits": {"max_bytes": a.max_bytes, "max_pixels": a.max_pixels, "max_files": a.max_files},
                    "device": a.device, "status": a.manager.model_status})

    def _upload(self, name: str) -> None:
        data = self._body()
        if data is None:
            return
        if not data:
            return self._error(f"{name}: empty file (0 bytes)")
        up = self.app.manager.add_upload(name, data)
        self._json(up.to_json())

    def _submit(self) -> None:
        data = self._body()
        if data is None:
            return
        try:
            req = json.loads(data or b"{}")
        except json.JSONDecodeError:
            return self._error("request is not JSON")
        if not isinstance(req, dict):
            return self._error("request is not a JSON object")
        uploads = req.get("uploads") or []
        if not isinstance(uploads, list) or not all(isinstance(u, str) for u in uploads):
            return self._error("uploads must be a list of upload ids")
        if len(uploads) > self.app.max_files:
            return self._error(f"{len(uploads)} files, above the limit of {self.app.max_files} per job (--max-files)")
        options = req.get("options") or {}
        if not isinstance(options, dict):
            return self._error("options must be an object")
        job = self.app.manager.submit(str(req.get("model") or self.app.default_model), options, req.get("seed", 0),
                                      uploads)
        self._json(self.app.manager.job_json(job))


def make_server(app: App, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("FewstepHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
