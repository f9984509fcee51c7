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
