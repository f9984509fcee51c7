"""How the ``edgeaiforge`` command reports a failure: one line, ``error: ...``, exit status 1
(2 for a usage error). A traceback is printed only for a bug, and then the line says so."""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.markup import escape
from typer.core import TyperGroup

from edgeaiforge._cli._common import err_console
from edgeaiforge._errors import ApiError, AuthenticationError, EdgeAIForgeError

__all__ = ["USAGE", "RootGroup", "describe", "one_line", "validation_message"]

#: The exit status of a usage error (click's own).
USAGE = 2


def one_line(text: str) -> str:
    """``text`` on one line: a list of ``- item`` lines becomes ``item; item``, and every
    other run of whitespace (line breaks too) one space."""
    out = ""
    for line in (raw.strip() for raw in text.splitlines()):
        if not line:
            continue
        if line.startswith("- ") and out:
            line = line[2:]
            out += " " if out.endswith(":") else "; "
        elif out:
            out += " "
        out += line
    return " ".join(out.split())


def validation_message(exc: ValidationError, names: dict[str, str] | None = None) -> str:
    """A pydantic error as one sentence: where, what and the value given. ``names`` maps
    a field to what the user typed for it (``{"waves": "--waves"}``)."""
    first = exc.errors(include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    where = (names or {}).get(loc[0], ".".join(loc)) if loc else "input"
    got = (
        f" (got {first['input']!r})"
        if "input" in first and not isinstance(first["input"], dict)
        else ""
    )
    more = f"; and {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
    return f"invalid {where}: {first['msg']}{got}{more}"


def _usage(exc: typer.TyperException) -> str:
    message = exc.format_message()
    # typer's usage errors carry the context of the command that refused the arguments.
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    usage = one_line(ctx.get_usage()).replace("Usage:", "usage:", 1)
    return f"{message.rstrip('.')}. {usage} (more: {ctx.command_path} --help)"


#: The API's hints name REST routes; at the command line each names the command instead.
_COMMAND_FOR_ROUTE = [
    (re.compile(r"GET /api/v1/models/([^/\s;]+)/versions"), r"`edgeaiforge model show \1`"),
    (re.compile(r"GET /api/v1/models\b"), "`edgeaiforge model list`"),
    (re.compile(r"GET /api/v1/keys\b"), "`edgeaiforge key list`"),
    (re.compile(r"GET /api/v1/devices\b"), "`edgeaiforge device list`"),
    (re.compile(r"GET /api/v1/deployments\b"), "`edgeaiforge deployment list`"),
    (re.compile(r"list devices to see which are"), "`edgeaiforge device list` shows them"),
    (
        re.compile(r"(deployment '[^']+' does not exist)$"),
        r"\1: `edgeaiforge deployment list` shows them",
    ),
]


def _api_message(exc: ApiError) -> str:
    message = str(exc)
    for route, command in _COMMAND_FOR_ROUTE:
        message = route.sub(command, message)
    if isinstance(exc, AuthenticationError):
        message += " (this command sends --token, else EAF_API_TOKEN)"
    return message


def describe(exc: BaseException) -> tuple[str, int] | None:
    """The line and exit status for an error the user can mend; None for a bug."""
    if isinstance(exc, typer.TyperException):
        # Usage errors (exit status 2) and typer's other errors (a file it cannot open).
        if exc.exit_code == USAGE:
            return _usage(exc), USAGE
        return exc.format_message(), exc.exit_code
    if isinstance(exc, typer.Abort):
        return "aborted; nothing was changed", 1
    if isinstance(exc, ApiError):
        return _api_message(exc), 1
    if isinstance(exc, EdgeAIForgeError):
        return str(exc), 1
    if isinstance(exc, ValidationError):
        # Request bodies are built from what the user typed; a reply that does not parse
        # is the SDK's UnexpectedResponseError, so this one is the user's input.
        return validation_message(exc), USAGE
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}", 1
    return None


def _fail(message: str, status: int) -> NoReturn:
    err_console.print(
        f"[red]error:[/red] {escape(one_line(message))}", highlight=False, soft_wrap=True
    )
    sys.exit(status)


class RootGroup(TyperGroup):
    """The root command: every failure below it ends here and becomes one line."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra
            )
        try:
            # Not standalone: click hands every error up to us instead of printing a
            # multi-line usage panel, and returns typer.Exit's status.
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except BrokenPipeError:
            sys.exit(1)  # `edgeaiforge ... | head`: nothing left to tell
        except Exception as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # typer tells it by name too
                sys.exit(USAGE)  # typer has printed the help already
            described = describe(exc)
            if described is None:
                traceback.print_exc()
                _fail(
                    f"unexpected {type(exc).__name__}: this is a bug in edgeaiforge; "
                    "please report it with the traceback above",
                    1,
                )
            _fail(*described)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        sys.exit(rv if isinstance(rv, int) else 0)
