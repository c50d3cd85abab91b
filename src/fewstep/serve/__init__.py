"""`fewstep serve`: a local web page to restore photos with any registered model.

`run(...)` builds the model list (serve/models.py, the one adapter to the registry), starts the
job worker (serve/jobs.py: one job per device at a time, progress and cancel through
`fewstep.progress`) and serves the page and its JSON API (serve/app.py) until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path


def run(*, host: str = "127.0.0.1", port: int = 7860, model: str | None = None, weights: str | Path | None = None,
        device: str = "cpu", dtype: str = "fp32", max_bytes: int = 50_000_000, max_pixels: int = 16_000_000,
        max_files: int = 32) -> None:
    from ..errors import FewstepError
    from ..registry import DEFAULT_MODEL  # the CLI's default: bundled, works offline
    from .app import App, make_server
    from .jobs import JobManager
    from .models import ModelCache, list_models

    infos = list_models(weights)
    by_name = {m.name: m for m in infos}
    default = model or DEFAULT_MODEL
    if default not in by_name:
        raise FewstepError(f"--model: unknown model {default!r}; available: {', '.join(sorted(by_name))}")
    if not by_name[default].present:
        raise FewstepError(f"--model {default}: weights not found: {by_name[default].hint}")
    with tempfile.TemporaryDirectory(prefix="fewstep-serve-") as workdir:
        cache = ModelCache(weights, device=device, dtype=dtype)
        manager = JobManager(Path(workdir), cache, by_name, max_pixels=max_pixels, default_model=default)
        app = App(manager, infos, default_model=default, max_bytes=max_bytes, max_pixels=max_pixels,
                  max_files=max_files, device=device)
        try:
            server = make_server(app, host, port)
        except OSError as e:
            manager.stop()
            raise FewstepError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None

        def on_term(signum, frame):  # SIGTERM stops like Ctrl-C: through the same cleanup
            raise KeyboardInterrupt

        # SIGINT too: a process started in the background by a script inherits SIGINT ignored
        previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
        shown = f"[{host}]" if ":" in host else host
        print(f"fewstep serve: http://{shown}:{server.server_address[1]}/  (model {default} on {device}; "
              "Ctrl-C to stop)", flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {host}: anyone who can reach this machine can use the page", file=sys.stderr)
        try:
            server.serve_forever(poll_interval=0.25)
        except KeyboardInterrupt:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            server.server_close()
            manager.stop()
            print("fewstep serve: stopped", flush=True)
