"""README's command table against the real commands: each command it lists answers
``--help`` with the arguments and options README shows, and each, given a wrong argument,
fails with one ``error:`` line and a non-zero exit (no traceback), against the real API,
registry and deployer on real NATS and Mosquitto."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from edge_runtime.cli import main as edge_runtime_main
from edgeaiforge import Model, ModelManager, ModelMetadata
from edgeaiforge._deploy import DeploymentTimeoutError
from edgeaiforge.cli import app
from services.common.mqtt_admin import SERVICE_ROLE
from services.deployer.app import create_service as create_deployer
from tests.support.api import create_api_key, serve_in_thread
from tests.support.deploy import platform_on_broker

README = Path(__file__).resolve().parents[2] / "README.md"
PROGRAMS = ("edgeaiforge", "edge-runtime")


class Documented(NamedTuple):
    """One command as README's table shows it."""

    program: str
    path: tuple[str, ...]
    placeholders: tuple[str, ...]
    options: tuple[str, ...]
    text: str


def _table_rows() -> Iterator[list[str]]:
    section = README.read_text().split("## The `edgeaiforge` command", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if line.startswith("| `"):
            yield [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def _parse(program: str, base: tuple[str, ...], words: list[str], text: str) -> Documented:
    path = list(base)
    while words and re.fullmatch(r"[a-z][a-z-]*", words[0]):
        path.append(words.pop(0))
    placeholders, options = [], []
    after_option = False
    for word in words:
        bare = word.strip("[]")
        if bare.startswith("--"):
            options.append(bare)
            # `--rate R` takes a value; `[--json]` (closed on itself) is a flag.
            after_option = not word.endswith("]")
        elif after_option:
            after_option = False
        elif re.fullmatch(r"[A-Z][A-Z_]*", bare):
            placeholders.append(bare)
    return Documented(program, tuple(path), tuple(placeholders), tuple(options), text)


def readme_commands() -> list[Documented]:
    """Every command README's table names: the first column's code spans (``a`` / ``b``
    name siblings of ``a``'s last word) and whole commands quoted in the second column."""
    roots = set(get_command(app).commands)  # type: ignore[attr-defined]
    found: list[Documented] = []
    for cells in _table_rows():
        program = ""
        path: tuple[str, ...] = ()
        for span in re.findall(r"`([^`]+)`", cells[0]):
            words = span.split()
            base: tuple[str, ...]
            if words[0] in PROGRAMS:
                program, base = words.pop(0), ()
            else:
                base = path[:-1]
            doc = _parse(program, base, words, span)
            path = doc.path
            found.append(doc)
        for span in re.findall(r"`([^`]+)`", cells[1]):
            words = span.split()
            if len(words) > 1 and words[0] in roots:
                found.append(_parse("edgeaiforge", (), words, span))
    return found


def readme_shell_commands() -> list[Documented]:
    """The ``edgeaiforge`` commands README's ``sh`` blocks show (the demo's hints)."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            words = line.split("#", 1)[0].split()
            if words and words[0].removeprefix(".venv/bin/") == "edgeaiforge":
                # Values, not placeholders, here: the command path ends where the tree does.
                command, path, rest = get_command(app), [], words[1:]
                while rest and rest[0] in getattr(command, "commands", {}):
                    command = command.commands[rest[0]]  # type: ignore[attr-defined]
                    path.append(rest.pop(0))
                options = tuple(w for w in rest if w.startswith("--"))
                found.append(Documented("edgeaiforge", tuple(path), (), options, line.strip()))
    return found


DOCUMENTED = readme_commands() + readme_shell_commands()


def test_readme_table_is_read_whole() -> None:
    paths = {" ".join((d.program, *d.path)) for d in DOCUMENTED}
    # A sample across the table, so that a change of its layout cannot empty this test.
    assert {
        "edgeaiforge up",
        "edgeaiforge model add",
        "edgeaiforge model show",
        "edgeaiforge deploy",
        "edgeaiforge deployment rollback",
        "edgeaiforge fleet stop",
        "edgeaiforge key revoke",
        "edge-runtime enroll",
    } <= paths
    assert len(paths) >= 30
    assert {"edgeaiforge stats", "edgeaiforge status"} <= {
        " ".join((d.program, *d.path)) for d in readme_shell_commands()
    }


def test_readme_first_admin_key_command_makes_a_key(tmp_path: Path) -> None:
    """README's ``python -m services.registry create-key ...`` line, run as written (with
    its config file pointing into a temporary directory), prints a working token."""
    line = re.search(r"`(python -m services\.registry create-key [^`]+)`", README.read_text())
    assert line is not None, "README no longer shows how to make the first admin key"
    words = line.group(1).split()
    config = tmp_path / "edgeaiforge.toml"
    config.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "registry.db"}"\n'
        f'[model_repository]\nstorage_path = "{tmp_path / "models"}"\n'
        f'[security]\nencryption_key_path = "{tmp_path / "kek.key"}"\n'
        f'signing_key_path = "{tmp_path / "signing.pem"}"\ndev_mode = true\n'
    )
    words[words.index("--config") + 1] = str(config)
    done = subprocess.run(
        [sys.executable, *words[1:]], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^eaf_[0-9a-f]{12}_\S+$", done.stdout, re.M), done.stdout


@pytest.mark.parametrize("doc", DOCUMENTED, ids=lambda d: d.text)
def test_readme_command_has_help(doc: Documented, capsys: pytest.CaptureFixture[str]) -> None:
    """README's command exists and takes the arguments and options README shows."""
    if doc.program == "edge-runtime":
        with pytest.raises(SystemExit) as stop:
            edge_runtime_main([*doc.path, "--help"])
        assert stop.value.code == 0
        text = capsys.readouterr().out
    else:
        result = CliRunner().invoke(app, [*doc.path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        text = result.output
        # --help of a group would answer too: README's path must end at a command.
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        assert "COMMAND" not in usage or doc.path[-1] in {"up", "down", "status"}, usage
        for word in doc.placeholders:
            assert word in usage, f"README shows {word} for `{doc.text}`; the usage is {usage}"
    for word in doc.options:
        assert word in text, f"README shows {word} for `{doc.text}`; its --help does not"


def _hinted_commands(line: str) -> list[list[str]]:
    """The commands an error line tells the user to run (`edgeaiforge ...` spans)."""
    found = []
    for span in re.findall(r"`edgeaiforge ([^`]+)`", line):
        words = span.split()
        path = []
        while words and re.fullmatch(r"[a-z][a-z-]*", words[0]):
            path.append(words.pop(0))
        found.append(path)
    return found


def test_a_bug_is_a_traceback_that_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a user's error: the traceback stays, and the last line says it is a bug."""

    def broken(self: ModelManager) -> None:
        raise KeyError("inner")

    monkeypatch.setattr(ModelManager, "whoami", broken)
    env = {"EAF_API_URL": "http://127.0.0.1:9", "EAF_API_TOKEN": "t" * 20}
    result = CliRunner().invoke(app, ["key", "whoami"], env=env)
    assert result.exit_code == 1
    assert "Traceback" in result.output and "KeyError: 'inner'" in result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: unexpected KeyError: this is a bug in edgeaiforge; please report it with the "
        "traceback above"
    )


# ---- wrong arguments against the running platform -----------------------------------


class Case(NamedTuple):
    covers: str  # the README command, as `program path...`
    args: list[str]
    status: int
    says: str  # a piece of the one error line


def _cases(name: str, src: Path, missing: Path) -> list[Case]:
    deployment = "0" * 8 + "-0000-0000-0000-" + "0" * 12
    return [
        Case("edgeaiforge up", ["up", "--config", str(missing)], 2, str(missing)),
        Case("edgeaiforge down", ["down", "--config", str(missing)], 2, str(missing)),
        Case("edgeaiforge status", ["status", "--config", str(missing)], 2, str(missing)),
        Case("edgeaiforge fleet simulate", ["fleet", "simulate", "--devices", "0"], 2, "--devices"),
        Case("edgeaiforge fleet stop", ["fleet", "stop", "--config", str(missing)], 2, "missing"),
        Case("edgeaiforge model add", ["model", "add", name, "2.0.0", str(missing)], 1,
             "does not exist"),
        Case("edgeaiforge model add", ["model", "add", name, "2.0", str(src)], 1,
             "semantic version"),
        Case("edgeaiforge model add", ["model", "add", name, str(src)], 2,
             "model add NAME VERSION"),
        Case("edgeaiforge model add", ["model", "add", name, "2.0.0", str(src), "-v", "3.0.0"],
             2, "given twice"),
        Case("edgeaiforge model list", ["model", "list", "--limit", "many"], 2, "--limit"),
        Case("edgeaiforge model show", ["model", "show", name, "9.9.9"], 1,
             f"list its versions with `edgeaiforge model show {name}`"),
        Case("edgeaiforge model download",
             ["model", "download", name, "1.0.0", "-o", str(missing.parent / "no" / "x.onnx")],
             2, "does not exist"),
        Case("edgeaiforge model delete", ["model", "delete", name, "9.9.9", "--yes"], 1, "9.9.9"),
        Case("edgeaiforge model alias", ["model", "alias", name, "production"], 2, "--remove"),
        Case("edgeaiforge model reports", ["model", "reports", "no-such-model", "1.0.0"], 1,
             "'no-such-model' does not exist; list models with `edgeaiforge model list`"),
        # The order README documents: options after MODEL and DEVICE reach the deployer.
        Case("edgeaiforge deploy", ["deploy", name, "no-such-device", "--version", "1.0.0",
             "--no-wait", "--timeout", "5"], 1, f"{name}@1.0.0"),
        Case("edgeaiforge deploy", ["deploy", name], 2, "--group"),
        Case("edgeaiforge deploy", ["deploy", name, "d1", "--waves", "garbage"], 2,
             "'garbage' is not a wave size"),
        Case("edgeaiforge deploy", ["deploy", name, "d1", "--success-threshold", "7"], 2,
             "--success-threshold"),
        Case("edgeaiforge deploy", ["deploy", "status", deployment], 1,
             "`edgeaiforge model list`; to see or change a deployment use "
             "`edgeaiforge deployment show ...`"),
        Case("edgeaiforge deployment list", ["deployment", "list", "--status", "sleeping"], 2,
             "sleeping"),
        *(
            Case(f"edgeaiforge deployment {verb}", ["deployment", verb, deployment], 1,
                 "does not exist: `edgeaiforge deployment list` shows them")
            for verb in ("show", "pause", "resume", "cancel", "rollback")
        ),
        Case("edgeaiforge device list", ["device", "list", "--label", "no-equals"], 2,
             "key=value"),
        Case("edgeaiforge device show", ["device", "show", "no-such-device"], 1,
             "not enrolled: `edgeaiforge device list` shows"),
        Case("edgeaiforge device token", ["device", "token", "--ttl", "soon"], 2, "--ttl"),
        Case("edgeaiforge device labels", ["device", "labels", "no-such-device", "--label",
             "a=b"], 1, "no-such-device"),
        Case("edgeaiforge device remove", ["device", "remove", "no-such-device", "--yes"], 1,
             "no-such-device"),
        Case("edgeaiforge stats", ["stats", name, "--window", "-5"], 1, "window"),
        Case("edgeaiforge key create", ["key", "create", "x", "--role", "root"], 2, "root"),
        Case("edgeaiforge key list", ["key", "list", "surplus"], 2, "surplus"),
        Case("edgeaiforge key revoke", ["key", "revoke", "no-such-key"], 2, "edgeaiforge key list"),
        Case("edgeaiforge key revoke", ["key", "revoke", "0123456789ab"], 1,
             "list keys with `edgeaiforge key list`"),
        Case("edgeaiforge key whoami", ["--token", "", "key", "whoami"], 1,
             "the API token is empty"),
        Case("edgeaiforge key whoami", ["--token", "eaf_no_such_key_0123456789", "key",
             "whoami"], 1, "401"),
        Case("edgeaiforge key whoami", ["--token", "abc\ndef", "key", "whoami"], 1,
             "line breaks"),
    ]  # fmt: skip


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    return lines[0]


async def test_wrong_arguments_are_one_line_each(
    nats_server, mosquitto_server, mqtt_user, tmp_path, unique_id
) -> None:
    user = await mqtt_user(roles=[SERVICE_ROLE])
    settings = platform_on_broker(
        tmp_path, nats_url=nats_server.url, mosquitto=mosquitto_server, user=user,
    )  # fmt: skip
    name = unique_id("cli-err-")
    src = tmp_path / "m.onnx"
    src.write_bytes(os.urandom(10_000))
    cases = _cases(name, src, tmp_path / "missing.toml")
    runner = CliRunner()
    with serve_in_thread(settings, durable_prefix=unique_id("registry-")) as url:
        admin = create_api_key(settings, role="admin")
        env = {"EAF_API_URL": url, "EAF_API_TOKEN": admin, "EAF_CONFIG": "", "COLUMNS": "300"}

        def cli(args: list[str]) -> Any:
            return runner.invoke(app, args, env=env, input="")

        async with AsyncExitStack() as stack:
            await stack.enter_async_context(create_deployer(settings))
            mm = ModelManager(url, admin)
            stack.callback(mm.close)
            await asyncio.to_thread(
                mm.add_model, Model(name, src), ModelMetadata("det", "1.0.0"), wait=False
            )
            hints = _hinted_commands(str(DeploymentTimeoutError("d-1", 0)))
            for case in cases:
                result = await asyncio.to_thread(cli, case.args)
                assert result.exception is None or isinstance(result.exception, SystemExit), (
                    case.args, result.output
                )  # fmt: skip
                assert "Traceback" not in result.output, (case.args, result.output)
                assert result.exit_code == case.status, (case.args, result.output)
                line = _one_error_line(result.output)
                print(" ".join(case.args), "->", line)  # shown when the test fails
                assert case.says in line, (case.args, line)
                hints += _hinted_commands(line)
            # What the wrong arguments did not do: no key 'x', no deployment, no version.
            keys = await asyncio.to_thread(mm.list_api_keys, include_revoked=True)
            assert "x" not in {k.name for k in keys}
            assert await asyncio.to_thread(mm.list_deployments, model=name) == []
            versions = await asyncio.to_thread(mm.list_versions, name)
            assert [v.version for v in versions.items] == ["1.0.0"]

    # Every command an error names exists (the timeout once named `deploy status`).
    assert ["deployment", "show"] in hints and ["model", "list"] in hints
    for path in hints:
        assert runner.invoke(app, [*path, "--help"]).exit_code == 0, path

    covered = {c.covers for c in cases}
    for doc in DOCUMENTED:
        if doc.program == "edgeaiforge":
            assert " ".join((doc.program, *doc.path)) in covered, doc.text


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["enroll", "--api", "http://127.0.0.1:9"], "--token"),
        (["enroll", "--api", "http://127.0.0.1:9", "--token", "short", "--device-id", "d1",
          "--state-dir", "{tmp}"], "token"),
        (["enroll", "--api", "http://127.0.0.1:9", "--token", "t" * 24, "--device-id", "a b",
          "--state-dir", "{tmp}"], "device id"),
        (["run"], "--state-dir"),
        (["run", "--state-dir", "{tmp}", "--threads", "many"], "--threads"),
    ],
)  # fmt: skip
def test_edge_runtime_wrong_arguments_are_one_line(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        edge_runtime_main([a.replace("{tmp}", str(tmp_path / "state")) for a in argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edge-runtime: error: "), err
    assert says in lines[0]
