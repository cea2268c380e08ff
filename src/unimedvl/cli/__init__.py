"""Command line: one table of commands (:data:`COMMANDS`), each a thin wrapper over a library function.

    unimedvl ask | generate | edit | serve | info | demo | train
    unimedvl data build | transform | review | agreement
    unimedvl eval BENCHMARK | all | generation | counterfactual | edits | merge | pairs | compare

Inputs and outputs are checked before a model loads. Every error a user can cause (a bad file,
option or value, an unknown command, a missing argument) prints one line `error: ...` and exits
with status 2 (1 when the machine refuses a write: a full disk, a read-only folder); `main(argv)` returns the status instead of exiting.
"""

from __future__ import annotations

import errno
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import typer

from unimedvl.cli import commands, data_commands, eval_commands
from unimedvl.errors import UnimedvlError
from unimedvl.eval.benchmarks import BENCHMARKS


@dataclass(frozen=True)
class Command:
    name: str
    function: Callable[..., None]
    group: str | None = None  # a sub-command group ("data"), or None for a top-level command
    extra_args: bool = False  # takes key=value overrides after its arguments

    @property
    def usage(self) -> str:
        return " ".join(p for p in ("unimedvl", self.group, self.name) if p)


COMMANDS: tuple[Command, ...] = (
    Command("ask", commands.ask),
    Command("generate", commands.generate),
    Command("edit", commands.edit),
    Command("serve", commands.serve),
    Command("info", commands.info),
    Command("demo", commands.demo),
    Command("train", commands.train, extra_args=True),
    Command("build", data_commands.build, group="data"),
    Command("transform", data_commands.transform, group="data"),
    Command("review", data_commands.review, group="data"),
    Command("agreement", data_commands.agreement, group="data"),
    *(Command(name, eval_commands.benchmark_command(name), group="eval") for name in BENCHMARKS),
    Command("all", eval_commands.evaluate_all, group="eval"),
    Command("generation", eval_commands.generation, group="eval"),
    Command("counterfactual", eval_commands.counterfactual, group="eval"),
    Command("edits", eval_commands.edits, group="eval"),
    Command("merge", eval_commands.merge, group="eval"),
    Command("pairs", eval_commands.pairs, group="eval"),
    Command("compare", eval_commands.compare, group="eval"),
)
GROUPS = {"data": "Build and review multimodal corpora.",
          "eval": "Evaluate on benchmarks (official formats or the bundled held-out sets); score image pairs; "
                  "compare finished runs."}


def build_app() -> typer.Typer:
    options = dict(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
    app = typer.Typer(help="UniMedVL: one model for medical image understanding and generation.", **options)
    groups = {name: typer.Typer(help=text, **options) for name, text in GROUPS.items()}
    for name, group in groups.items():
        app.add_typer(group, name=name)
    for command in COMMANDS:
        target = groups[command.group] if command.group else app
        settings = {"allow_extra_args": True, "ignore_unknown_options": False} if command.extra_args else {}
        target.command(command.name, context_settings=settings)(command.function)
    return app


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


# The machine, not the input: a full disk, a quota, a read-only or forbidden folder.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 the machine refused a write, 2 bad input or usage,
    130 interrupted)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    warnings.showwarning = _one_line_warning
    try:
        code = build_app()(args=argv, prog_name="unimedvl", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool):  # click returns typer.Exit's code here
            return code
    except UnimedvlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        # Writes are atomic, so a full disk or a read-only folder leaves what was there before untouched.
        where = f"writing {exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; files already there were left as they were", file=sys.stderr)
        return 1
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # click's usage errors: unknown command, missing or bad option
        if type(exc).__name__ == "NoArgsIsHelpError":  # no command given: the help is the answer
            print(exc.format_message(), file=sys.stderr)  # type: ignore[attr-defined]
            return 2
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
