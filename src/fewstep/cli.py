"""The `fewstep` command.

Commands that belong to one subsystem live next to it (e.g. `fewstep.degrade.testset`) and are
listed in `_COMMANDS` as "module:function"; those modules keep heavy imports inside the function,
so `fewstep --help` stays fast. Every `FewstepError` is printed as one line, without a traceback.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="fewstep",
    help="Few-step diffusion image super-resolution and restoration (ResShift, S3Diff, SkipDiff).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# name -> "module:function". The function's typed signature is the command's interface.
_COMMANDS: dict[str, str] = {
    "upscale": "fewstep.commands.upscale:upscale_command",
    "weights": "fewstep.commands.weights:weights_command",
    "train": "fewstep.commands.train:train_command",
    "eval": "fewstep.commands.eval:eval_command",
    "make-testset": "fewstep.degrade.testset:make_testset_command",
    "serve": "fewstep.commands.serve:serve_command",
}


def _register_commands() -> None:
    from .registry import resolve_object

    for name, target in _COMMANDS.items():
        fn = resolve_object(target, what=f"command {name!r}", optional=True)
        if fn is not None:  # None: that subsystem is not part of this build
            app.command(name)(fn)


_register_commands()


def main() -> None:
    from .errors import FewstepError

    try:
        app()
    except FewstepError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
