"""KEY=VALUE option parsing, in one place: `--opt KEY=VALUE`, `--model NAME:KEY=VALUE,...`,
and the checking of option values against a model's typed `OptionSpec`s."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .errors import FewstepError

if TYPE_CHECKING:
    from .registry import OptionSpec


def parse_value(text: str) -> Any:
    """A command-line value as Python: none/null -> None, true/false -> bool, numbers -> int/float,
    anything else stays a string. Typed checking against the model happens in `coerce`."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_pairs(items: Iterable[str], *, where: str = "--opt") -> dict[str, Any]:
    """["key=value", ...] -> {key: value}; '-' in keys becomes '_' (so --opt color-fix=none works)."""
    opts: dict[str, Any] = {}
    for item in items:
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FewstepError(f"{where}: options must be key=value, got {item!r}")
        opts[key.strip().replace("-", "_")] = parse_value(value.strip())
    return opts


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """"name" or "name:key=value[,key=value...]" -> (name, kwargs) (':' also separates options)."""
    name, _, rest = spec.partition(":")
    opts = parse_pairs(rest.replace(":", ",").split(","), where=f"--model {spec}")
    if not name:
        raise FewstepError(f"--model {spec!r}: missing model name")
    return name, opts


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def coerce(model: str, opt: OptionSpec, value: Any, valid: str) -> Any:
    """`value` as `opt.type`, or a one-line FewstepError naming the option and the valid ones."""

    def bad(why: str) -> FewstepError:
        return FewstepError(f"model {model!r}: option {opt.name}={value!r} {why} (options: {valid})")

    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        if opt.default is None or (opt.choices and ("none" in opt.choices or None in opt.choices)):
            return None
        raise bad(f"must be {_TYPE_NAMES.get(opt.type, opt.type.__name__)}")
    t = opt.type
    out: Any
    if t is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, (int, str)) and str(value).strip().lower() in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            out = str(value).strip().lower() in ("1", "true", "yes", "on")
        else:
            raise bad("must be true or false")
    elif t is int:
        out = None
        if isinstance(value, int) and not isinstance(value, bool):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            out = int(value)
        if out is None:
            raise bad("must be an integer")
    elif t is float:
        if isinstance(value, bool):
            raise bad("must be a number")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad("must be a number") from None
    elif t is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad("must be a string")
        out = str(value)
    else:  # a custom type: trust the model's factory to check it
        return value
    if opt.choices is not None and out not in opt.choices:
        raise bad(f"must be one of {', '.join(map(str, opt.choices))}")
    if opt.min is not None and out < opt.min:
        raise bad(f"must be >= {opt.min:g}")
    if opt.max is not None and out > opt.max:
        raise bad(f"must be <= {opt.max:g}")
    return out
