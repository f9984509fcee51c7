"""The ``edgeaiforge model`` command against the running registry and API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from edgeaiforge.cli import app
from tests.support.api import create_api_key, serve_in_thread
from tests.support.settings import platform_settings


def test_model_commands_end_to_end(tmp_path: Path, nats_server: Any, unique_id: Any) -> None:
    settings = platform_settings(tmp_path, nats_url=nats_server.url)
    src = tmp_path / "m.onnx"
    src.write_bytes(os.urandom(600_000))
    name = unique_id("cli-")
    runner = CliRunner()
    with serve_in_thread(settings) as url:
        env = {"EAF_API_URL": url, "EAF_API_TOKEN": create_api_key(settings, role="admin")}

        def run(*args: str) -> Any:
            result = runner.invoke(app, list(args), env=env)
            return result

        added = run(
            "model",
            "add",
            name,
            str(src),
            "--version",
            "1.0.0",
            "--task",
            "det",
            "--tag",
            "edge",
            "--property",
            "k=v",
            "--no-wait",
            "--json",
        )
        assert added.exit_code == 0, added.output
        assert json.loads(added.stdout)["sequence"] == 1
        # README's order, NAME VERSION FILE, and FILE with -v (above) both upload.
        assert run("model", "add", name, "1.1.0", str(src), "--no-wait").exit_code == 0

        listed = run("model", "list", "--prefix", name, "--json")
        assert [m["name"] for m in json.loads(listed.stdout)["items"]] == [name]
        table = run("model", "list", "--prefix", name)
        assert name in table.stdout and "1.1.0" in table.stdout

        alias = run("model", "alias", name, "production", "1.0.0", "--json")
        assert json.loads(alias.stdout)["version"] == "1.0.0"
        shown = json.loads(run("model", "show", name, "production", "--json").stdout)
        assert shown["version"] == "1.0.0" and shown["metadata"]["properties"] == {"k": "v"}
        assert "production" in run("model", "show", name).stdout

        out = tmp_path / "out.onnx"
        dl = run("model", "download", name, "production", "-o", str(out))
        assert dl.exit_code == 0, dl.output
        assert out.read_bytes() == src.read_bytes()

        refused = run("model", "delete", name, "1.0.0", "--yes")
        assert refused.exit_code == 1 and "alias" in refused.output
        assert run("model", "delete", name, "1.1.0", "--yes").exit_code == 0

        dup = run("model", "add", name, str(src), "-v", "1.0.0")
        assert dup.exit_code == 1 and "already has version" in dup.output
        missing = run("model", "add", name, str(tmp_path / "nope.onnx"), "-v", "2.0.0")
        assert missing.exit_code == 1 and "does not exist" in missing.output
        bad = run("model", "add", name, str(src), "-v", "2.0")
        assert bad.exit_code == 1 and "semantic version" in bad.output

    no_url = runner.invoke(app, ["model", "list"], env={"EAF_API_URL": "", "EAF_API_TOKEN": ""})
    assert no_url.exit_code == 1 and "EAF_API_URL" in no_url.output


def test_key_commands_create_list_revoke(tmp_path: Path, nats_server: Any, unique_id: Any) -> None:
    settings = platform_settings(tmp_path, nats_url=nats_server.url)
    runner = CliRunner()
    with serve_in_thread(settings) as url:
        admin = {"EAF_API_URL": url, "EAF_API_TOKEN": create_api_key(settings, role="admin")}

        def run(env: dict[str, str], *args: str) -> Any:
            return runner.invoke(app, list(args), env=env)

        name = unique_id("ci-")
        created = run(admin, "key", "create", name, "--role", "viewer", "--json")
        assert created.exit_code == 0, created.output
        body = json.loads(created.stdout)
        key_id, viewer = body["key"]["key_id"], {"EAF_API_URL": url, "EAF_API_TOKEN": body["token"]}

        me = json.loads(run(viewer, "key", "whoami", "--json").stdout)
        assert (me["key_id"], me["name"], me["role"]) == (key_id, name, "viewer")
        # A viewer may not manage keys.
        refused = run(viewer, "key", "create", "sneaky", "--role", "admin")
        assert refused.exit_code == 1 and "403" in refused.output
        listed = json.loads(run(admin, "key", "list", "--json").stdout)["items"]
        assert key_id in {k["key_id"] for k in listed}

        assert run(admin, "key", "revoke", key_id).exit_code == 0
        gone = run(viewer, "key", "whoami")
        assert gone.exit_code == 1 and "401" in gone.output
        assert key_id not in {
            k["key_id"] for k in json.loads(run(admin, "key", "list", "--json").stdout)["items"]
        }
        revoked = json.loads(run(admin, "key", "list", "--all", "--json").stdout)["items"]
        assert [k["revoked_at"] is not None for k in revoked if k["key_id"] == key_id] == [True]
        bad_role = run(admin, "key", "create", "x", "--role", "root")
        # A usage error, refused before any request: no key named 'x' exists.
        assert bad_role.exit_code == 2 and "root" in bad_role.output
        listed_all = json.loads(run(admin, "key", "list", "--all", "--json").stdout)["items"]
        assert "x" not in {k["name"] for k in listed_all}
