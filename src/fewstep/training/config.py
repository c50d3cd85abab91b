"""Training configs: plain YAML plus ``key.sub=value`` overrides.

Path rule (one rule, so a config works from any working directory):
- a relative path written *in the YAML file* is relative to the folder of that file;
- a relative path given with ``--set`` on the command line is relative to the current directory.
A value is a path when its key ends in ``_dir``, ``_path`` or ``_file`` or is ``weights``;
`load_config` turns every such value into an absolute path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

from ..errors import FewstepError

_PATH_SUFFIXES = ("_dir", "_path", "_file")


def is_path_key(key: str) -> bool:
    return key == "weights" or key.endswith(_PATH_SUFFIXES)


def _resolve_paths(node: Any, base: Path) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if isinstance(v, str) and isinstance(k, str) and is_path_key(k) and v:
                p = Path(v).expanduser()
                out[k] = str(p if p.is_absolute() else (base / p).resolve())
            else:
                out[k] = _resolve_paths(v, base)
        return out
    if isinstance(node, list):
        return [_resolve_paths(v, base) for v in node]
    return node


def parse_value(text: str) -> Any:
    """Parse an override value with YAML rules ("1e-4" -> float, "[1,2]" -> list, "x" -> str)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-4" as a string (it wants "1.0e-4"); people write the short form.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _fix_floats(node: Any) -> Any:
    """YAML 1.1 leaves "5e-5" a string; turn such scalars into floats everywhere."""
    if isinstance(node, dict):
        return {k: _fix_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_floats(v) for v in node]
    if isinstance(node, str) and node[:1] in "0123456789.-+" and ("e" in node or "E" in node):
        try:
            return float(node)
        except ValueError:
            return node
    return node


def apply_overrides(config: dict, overrides: Iterable[str], *, base: Path | None = None) -> dict:
    """Return a copy of `config` with each "a.b.c=value" applied (creating missing sections)."""
    cfg = copy.deepcopy(config)
    base = Path.cwd() if base is None else base
    for item in overrides:
        if "=" not in item:
            raise FewstepError(f"--set {item!r}: expected key.sub=value")
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".")]
        if not all(parts):
            raise FewstepError(f"--set {item!r}: empty key segment")
        node = cfg
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise FewstepError(f"--set {item!r}: {p!r} is a value, not a section")
            node = nxt
        value = parse_value(text)
        if isinstance(value, str) and is_path_key(parts[-1]) and value:
            p = Path(value).expanduser()
            value = str(p if p.is_absolute() else (base / p).resolve())
        node[parts[-1]] = value
    return cfg


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict:
    """Read a YAML training config, resolve its paths and apply overrides."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FewstepError(f"config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise FewstepError(f"{path}: invalid YAML{where}") from None
    if not isinstance(raw, dict):
        raise FewstepError(f"{path}: expected a mapping at the top level")
    cfg = _resolve_paths(_fix_floats(raw), path.resolve().parent)
    cfg = apply_overrides(cfg, overrides)
    cfg.setdefault("_config_file", str(path.resolve()))
    return cfg


def section(cfg: dict, name: str) -> dict:
    """cfg[name] as a dict ({} when absent); error when it is not a mapping."""
    value = cfg.get(name) or {}
    if not isinstance(value, dict):
        raise FewstepError(f"config: {name!r} must be a mapping")
    return value


def require(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        if not isinstance(node, dict) or p not in node or node[p] is None:
            raise FewstepError(f"config: missing required key {dotted!r}")
        node = node[p]
    return node
