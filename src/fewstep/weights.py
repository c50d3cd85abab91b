"""Where weight files come from: a local folder, the fewstep cache, or (online) their release URL.

Resolution order for a file named FILE:
  1. ``weights_dir/FILE`` when the caller gives a folder (``--weights DIR``);
  2. ``$FEWSTEP_HOME/weights/FILE`` (default ``~/.cache/fewstep/weights``);
  3. download from the file's URL into (2) — only when ``download=True`` and ``FEWSTEP_OFFLINE``
     is not set. The download goes to ``FILE.part`` and is renamed only once complete (and its
     sha256 checked when known), so an interrupted download never leaves a truncated weight file.
If all fail, `WeightsNotFoundError` says which file is missing and which folder to put it in.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsNotFoundError


@dataclass(frozen=True)
class WeightFile:
    """A released weight file: its canonical local name and where it is published."""

    filename: str
    url: str | None = None
    sha256: str | None = None
    aliases: tuple[str, ...] = ()  # other names users may have saved it under


def fewstep_home() -> Path:
    return Path(os.environ.get("FEWSTEP_HOME", Path.home() / ".cache" / "fewstep"))


def cache_dir() -> Path:
    return fewstep_home() / "weights"


def _offline() -> bool:
    return os.environ.get("FEWSTEP_OFFLINE", "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def find_local(wf: WeightFile, weights_dir: str | Path | None = None) -> Path | None:
    folders = ([Path(weights_dir)] if weights_dir else []) + [cache_dir()]
    for folder in folders:
        for name in (wf.filename, *wf.aliases):
            p = folder / name
            if p.is_file():
                return p
    return None


def resolve(wf: WeightFile, weights_dir: str | Path | None = None, *, download: bool = True,
            quiet: bool = False) -> Path:
    """Return a local path to `wf`, downloading it into the cache if allowed and possible."""
    found = find_local(wf, weights_dir)
    if found is not None:
        if wf.sha256:  # a known release hash: a corrupt or wrong local file is named, not loaded
            verify_sha256(found, wf.sha256)
        return found
    target_dir = Path(weights_dir) if weights_dir else cache_dir()
    reason = "no URL is known for it"
    if wf.url and download and not _offline():
        try:
            return download_file(wf, cache_dir(), quiet=quiet)
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as e:
            reason = f"download from {wf.url} failed ({e.__class__.__name__}: {e})"
    elif wf.url:
        reason = f"offline; it is published at {wf.url}"
    raise WeightsNotFoundError(f"weights not found: put {wf.filename} in {target_dir} ({reason})")


def download_file(wf: WeightFile, folder: Path, *, quiet: bool = False, timeout: float = 30.0) -> Path:
    """Download `wf.url` to `folder/wf.filename` via a `.part` file; verify sha256 when known."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / wf.filename
    part = folder / (wf.filename + ".part")
    digest = hashlib.sha256()
    with urllib.request.urlopen(wf.url, timeout=timeout) as response, open(part, "wb") as fh:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=wf.filename, disable=quiet) as bar:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        part.unlink(missing_ok=True)
        raise OSError(f"incomplete download of {wf.filename}: {part.stat().st_size} of {total} bytes")
    if wf.sha256 and digest.hexdigest() != wf.sha256:
        part.unlink(missing_ok=True)
        raise OSError(f"checksum mismatch for {wf.filename}")
    shutil.move(part, final)
    return final


# ------------------------------------------------------------------------------ integrity
# Hashes already verified, keyed by real path with the file's size and mtime: a 100 MB-1 GB weight
# file is hashed once, not on every run. A changed size or mtime means hashing again. (This guards
# against corruption and swapped files, not against someone forging both content and mtime.)


def _verified_cache() -> Path:
    return fewstep_home() / "verified_sha256.json"


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise FewstepError("PATH: sha256 mismatch ...") unless the file's sha256 is `expected`."""
    import json

    from .errors import FewstepError

    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise FewstepError(f"{p}: cannot read weight file ({e.strerror or e})") from None
    key, expected = os.path.realpath(p), expected.strip().lower()
    cache_file = _verified_cache()
    try:
        cache = json.loads(cache_file.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns \
            and hit.get("sha256") == expected:
        return
    digest = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        raise FewstepError(f"{p}: sha256 mismatch (expected {expected[:16]}..., file has {actual[:16]}...): "
                           "the file is corrupt or not the released one; restore or download it again")
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": actual}
    try:  # the cache is an optimisation: a read-only home just means hashing again next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        os.replace(tmp, cache_file)
    except OSError:
        pass
