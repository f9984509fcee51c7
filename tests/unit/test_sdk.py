"""The SDK's local behaviour: configuration, file checks, metadata, error mapping."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from edgeaiforge import (
    ApiError,
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    InvalidInputError,
    InvalidRequestError,
    Model,
    ModelFileError,
    ModelManager,
    ModelMetadata,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
)
from edgeaiforge._http import _raise_for


def test_manager_reads_url_and_token_from_arguments_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EAF_API_URL", raising=False)
    monkeypatch.delenv("EAF_API_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="EAF_API_URL"):
        ModelManager()
    monkeypatch.setenv("EAF_API_URL", "http://api.example:8000/")
    with pytest.raises(ConfigurationError, match="EAF_API_TOKEN"):
        ModelManager()
    monkeypatch.setenv("EAF_API_TOKEN", "t")
    with ModelManager() as mm:
        assert mm.url == "http://api.example:8000"
    with ModelManager("http://other:1", "t2") as mm:
        assert mm.url == "http://other:1"


def test_model_file_must_exist_and_be_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        Model("m", tmp_path / "missing.onnx")
    with pytest.raises(ModelFileError, match="not a regular file"):
        Model("m", tmp_path)
    f = tmp_path / "m.onnx"
    f.write_bytes(b"abc")
    model = Model("m", str(f))
    assert model.path == f.resolve() and model.size == 3
    if os.geteuid() != 0:  # root reads anything
        f.chmod(0)
        with pytest.raises(ModelFileError, match="cannot be read"):
            Model("m", f)


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".x"])
def test_model_names_are_checked_before_sending(tmp_path: Path, name: str) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(b"abc")
    with pytest.raises(InvalidInputError):
        Model(name, f)


def test_metadata_positional_like_the_seed_and_query_parameters() -> None:
    md = ModelMetadata(
        "Image Classification",
        "1.0.0",
        tags=["a", "b"],  # type: ignore[arg-type]
        properties={"k": "v=w"},
        parent_version="0.9.0",
    )
    assert md.task == "Image Classification" and md.version == "1.0.0"
    assert md.tags == ("a", "b")
    q = md.query()
    assert ("task", "Image Classification") in q and ("tag", "b") in q
    assert ("property", "k=v=w") in q and ("parent_version", "0.9.0") in q
    with pytest.raises(InvalidInputError, match="semantic version"):
        ModelMetadata("t", "1.0")
    with pytest.raises(InvalidInputError):
        ModelMetadata("t", "1.0.0", tags="vision")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, InvalidRequestError),
        (422, InvalidRequestError),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_problem_details_become_typed_errors(status: int, cls: type[ApiError]) -> None:
    response = httpx.Response(
        status,
        json={"title": "T", "status": status, "detail": "what to do", "code": "c"},
        headers={"content-type": "application/problem+json"},
    )
    with pytest.raises(cls, match="what to do") as info:
        _raise_for(response)
    assert info.value.status == status and info.value.code == "c"


def test_non_json_error_bodies_still_give_a_message() -> None:
    with pytest.raises(ServerError, match="bad gateway page"):
        _raise_for(httpx.Response(502, text="bad gateway page"))


def test_a_success_body_the_sdk_cannot_read_is_its_own_error() -> None:
    import httpx
    from pydantic import BaseModel

    from edgeaiforge import EdgeAIForgeError, UnexpectedResponseError
    from edgeaiforge._http import HttpClient

    class Reply(BaseModel):
        name: str

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"unexpected": True})

    client = HttpClient.__new__(HttpClient)
    client._client = httpx.Client(base_url="http://api", transport=httpx.MockTransport(answer))
    try:
        with pytest.raises(UnexpectedResponseError, match="/x: name: Field required") as err:
            client.call("GET", "/x", Reply)
        assert isinstance(err.value, EdgeAIForgeError)
    finally:
        client._client.close()


def _deployment_json(deployment_id: str) -> dict[str, object]:
    return {
        "deployment_id": deployment_id, "model": "m", "version": "1.0.0", "artifact_id": "a",
        "strategy": "all_at_once", "waves": [1], "current_wave": 0, "success_threshold": 1.0,
        "error_threshold": 0.0, "auto_rollback": False, "status": "running",
        "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
        "counts": {"pending": 1},
    }  # fmt: skip


def test_deploy_and_rollback_retry_a_lost_answer_with_the_same_idempotency_key() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("Idempotency-Key")))
        if len(seen) % 3 == 1:
            raise httpx.ReadTimeout("no answer", request=request)
        if len(seen) % 3 == 2:
            return httpx.Response(503, json={"title": "Service Unavailable"})
        return httpx.Response(200, json=_deployment_json("d" * 36))

    with ModelManager("http://api.example", "t") as mm:
        mm._http._client = httpx.Client(
            base_url="http://api.example", transport=httpx.MockTransport(handler)
        )
        made = mm.deploy_model("m", "dev-1", version="1.0.0")
        mm.deploy_model("m", "dev-1", version="1.0.0", request_id="mine")
        mm.rollback_deployment("d" * 36)
    assert made.deployment_id == "d" * 36
    keys = [key for _, key in seen]
    assert len(seen) == 9 and all(keys)
    # Each call kept one key over its three attempts; calls had different keys.
    assert [len(set(keys[i : i + 3])) for i in (0, 3, 6)] == [1, 1, 1]
    assert keys[3] == "mine" and len({keys[0], keys[3], keys[6]}) == 3
    assert seen[6][0] == f"/api/v1/deployments/{'d' * 36}/rollback"


def test_a_refused_deploy_is_not_retried() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(409, json={"title": "Conflict", "detail": "already used"})

    with ModelManager("http://api.example", "t") as mm:
        mm._http._client = httpx.Client(
            base_url="http://api.example", transport=httpx.MockTransport(handler)
        )
        with pytest.raises(ConflictError, match="already used"):
            mm.deploy_model("m", "dev-1", version="1.0.0", request_id="k")
    assert len(calls) == 1


def test_cli_passes_request_id_to_deploy_and_rollback(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from edgeaiforge.cli import app
    from schemas.deployer import DeploymentInfo

    got: list[tuple[str, str | None]] = []
    info = DeploymentInfo.model_validate(_deployment_json("d" * 36))

    def deploy(self: ModelManager, *args: object, request_id: str | None = None, **kw: object):
        got.append(("deploy", request_id))
        return info

    def rollback(self: ModelManager, deployment_id: str, *, request_id: str | None = None):
        got.append(("rollback", request_id))
        return info

    monkeypatch.setattr(ModelManager, "deploy_model", deploy)
    monkeypatch.setattr(ModelManager, "rollback_deployment", rollback)
    env = {"EAF_API_URL": "http://api.example", "EAF_API_TOKEN": "t"}
    runner = CliRunner()
    for args in (
        ["deploy", "--no-wait", "--request-id", "rel-7", "m", "dev-1"],
        ["deploy", "--no-wait", "m", "dev-1"],
        ["deployment", "rollback", "d" * 36, "--request-id", "rb-7", "--json"],
    ):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
    assert got == [("deploy", "rel-7"), ("deploy", None), ("rollback", "rb-7")]
