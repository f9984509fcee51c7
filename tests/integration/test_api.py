"""The REST API and the SDK against the real registry, NATS, and SQLite or PostgreSQL:
auth, versions, aliases, retention, bad input, ranges, and damaged artifacts."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeaiforge import (
    AuthenticationError,
    ConflictError,
    DownloadIntegrityError,
    Model,
    ModelManager,
    ModelMetadata,
    PermissionDeniedError,
)
from schemas.config import Settings
from services.common.artifacts import HEADER_LEN
from tests.support.api import create_api_key, serve_in_thread
from tests.support.fixtures import new_unique_id
from tests.support.settings import platform_settings

MAX_UPLOAD = 4 * 1024 * 1024
CHUNK = 262_144


@dataclass
class Platform:
    url: str
    settings: Settings
    admin: str
    deployer: str
    viewer: str

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def manager(self, token: str | None = None) -> ModelManager:
        return ModelManager(self.url, token or self.deployer)

    def stored_path(self, artifact_id: str) -> Path:
        return self.settings.model_repository.storage_path / artifact_id[:2] / artifact_id


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def platform(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    nats_server: Any,
    postgres_server: Any,
) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("api")
    database_url = None
    dbname = new_unique_id("eaf_api_")
    if request.param == "postgresql":
        postgres_server.sql(f'CREATE DATABASE "{dbname}"')
        database_url = postgres_server.url(dbname).replace(
            "postgresql://", "postgresql+asyncpg://", 1
        )
    settings = platform_settings(
        root,
        nats_url=nats_server.url,
        database_url=database_url,
        model_repository={"max_versions_per_model": 3, "max_upload_bytes": MAX_UPLOAD},
    )
    try:
        with serve_in_thread(settings) as url:
            yield Platform(
                url=url,
                settings=settings,
                admin=create_api_key(settings, role="admin"),
                deployer=create_api_key(settings, role="deployer"),
                viewer=create_api_key(settings, role="viewer"),
            )
    finally:
        if request.param == "postgresql":
            postgres_server.sql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def model_file(tmp_path: Path, size: int = 300_000, marker: bytes = b"") -> Path:
    path = tmp_path / f"{new_unique_id('f')}.onnx"
    data = bytearray(os.urandom(size))
    if marker:
        data[size // 2 : size // 2 + len(marker)] = marker
    path.write_bytes(bytes(data))
    return path


def upload(p: Platform, tmp_path: Path, model: str, version: str, **kw: Any) -> Any:
    with p.manager() as mm:
        return mm.add_model(
            Model(model, model_file(tmp_path, **kw)), ModelMetadata("t", version), wait=False
        )


def assert_problem(response: httpx.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    wanted = status if isinstance(status, tuple) else (status,)
    assert response.status_code in wanted, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code and body["title"] and body["detail"]
    return body


# ---- the round trip and metadata ----------------------------------------------------


def test_upload_list_get_download_with_metadata(platform: Platform, tmp_path: Path) -> None:
    name = new_unique_id("resnet")
    src = model_file(tmp_path, size=CHUNK * 3 + 17)
    with platform.manager() as mm:
        meta = ModelMetadata(
            "Image Classification",
            "1.0.0",
            framework="pytorch",
            description="first cut",
            tags=("vision", "edge"),
            properties={"dataset": "imagenet", "top1": "0.76"},
            source_url="https://ci.example/runs/42",
        )
        info = mm.add_model(Model(name, src), meta, wait=False)
        assert info.sequence == 1 and info.size_bytes == src.stat().st_size
        assert info.artifact_id == hashlib.sha256(src.read_bytes()).hexdigest()
        assert info.uploaded_by == "deployer-key"
        child = mm.add_model(
            Model(name, model_file(tmp_path)),
            ModelMetadata("Image Classification", "1.1.0", parent_version="1.0.0", tags=("x",)),
            wait=False,
        )
        assert child.metadata.parent_version == "1.0.0" and child.sequence == 2

        got = mm.get_version(name, "1.0.0")
        assert got.metadata.properties == {"dataset": "imagenet", "top1": "0.76"}
        assert got.metadata.tags == ("vision", "edge")
        assert got.metadata.source_url == "https://ci.example/runs/42"
        assert [v.version for v in mm.list_versions(name).items] == ["1.1.0", "1.0.0"]
        assert [v.version for v in mm.list_versions(name, tag="vision").items] == ["1.0.0"]
        page = mm.list_versions(name, limit=1, offset=1)
        assert page.total == 2 and [v.version for v in page.items] == ["1.0.0"]
        models = mm.list_models(prefix=name)
        assert [m.name for m in models.items] == [name]
        assert models.items[0].latest_version == "1.1.0"
        assert mm.list_models(tag="vision", prefix=name).total == 1

        updated = mm.update_metadata(name, "1.0.0", description="better words", tags=["a"])
        assert updated.metadata.description == "better words"
        assert updated.metadata.properties["dataset"] == "imagenet"

        out = mm.download(name, "1.0.0", tmp_path)
        assert out.read_bytes() == src.read_bytes()
        assert out.name == f"{name}-1.0.0.onnx"


def test_duplicate_version_409_and_not_semver_422(platform: Platform, tmp_path: Path) -> None:
    name = new_unique_id("m")
    upload(platform, tmp_path, name, "1.0.0")
    with platform.manager() as mm, pytest.raises(ConflictError, match="already has version"):
        mm.add_model(Model(name, model_file(tmp_path)), ModelMetadata("t", "1.0.0"), wait=False)
    with platform.client(platform.deployer) as c:
        for bad in ("1.0", "v1.0.0", "latest", "1.0.0.0"):
            r = c.put(f"/api/v1/models/{name}/versions/{bad}", content=b"x" * 10)
            assert "semantic version" in assert_problem(r, 422)["detail"]


def test_alias_moves_atomically(platform: Platform, tmp_path: Path) -> None:
    name = new_unique_id("m")
    upload(platform, tmp_path, name, "1.0.0")
    upload(platform, tmp_path, name, "2.0.0")
    seen: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        with platform.client(platform.viewer) as c:
            while not stop.is_set():
                r = c.get(f"/api/v1/models/{name}/versions/production")
                if r.status_code == 200:
                    seen.append(r.json()["version"])
                else:
                    errors.append(r.text)

    with platform.manager() as mm:
        first = mm.set_alias(name, "production", "1.0.0")
        assert first.previous_version is None
        readers = [threading.Thread(target=reader) for _ in range(2)]
        for t in readers:
            t.start()
        for i in range(20):
            target = "2.0.0" if i % 2 == 0 else "1.0.0"
            moved = mm.set_alias(name, "production", target)
            assert moved.previous_version == ("1.0.0" if target == "2.0.0" else "2.0.0")
        stop.set()
        for t in readers:
            t.join()
        assert errors == []
        assert set(seen) == {"1.0.0", "2.0.0"}
        # An aliased version cannot be deleted; the alias names its target in the model.
        with pytest.raises(ConflictError, match="alias"):
            ModelManager(platform.url, platform.admin).delete_version(name, "1.0.0")
        assert mm.get_model(name).aliases == {"production": "1.0.0"}
        mm.remove_alias(name, "production")
        assert mm.get_model(name).aliases == {}


def test_retention_prunes_oldest_unaliased_and_sequence_only_grows(
    platform: Platform, tmp_path: Path
) -> None:
    name = new_unique_id("m")
    with platform.manager() as mm:
        first = upload(platform, tmp_path, name, "1.0.0")
        assert upload(platform, tmp_path, name, "1.1.0").pruned == ()
        mm.set_alias(name, "production", "1.0.0")
        third = upload(platform, tmp_path, name, "1.2.0")
        assert third.pruned == ()
        # Each upload past max_versions_per_model (3) names what it pushed out: the
        # oldest version without an alias.
        assert upload(platform, tmp_path, name, "1.3.0").pruned == ("1.1.0",)
        assert upload(platform, tmp_path, name, "1.4.0").pruned == ("1.2.0",)
        assert {v.version for v in mm.list_versions(name).items} == {"1.0.0", "1.3.0", "1.4.0"}
        # The pruned artifacts are gone from disk, the aliased one is not.
        assert platform.stored_path(first.artifact_id).exists()
        assert not platform.stored_path(third.artifact_id).exists()
        # Numbers of deleted versions are never given again.
        again = upload(platform, tmp_path, name, "1.1.0")
        assert again.sequence == 6 and again.pruned == ("1.3.0",)


# ---- auth ---------------------------------------------------------------------------


def test_auth_no_token_viewer_upload_revoked_key(platform: Platform, tmp_path: Path) -> None:
    with platform.client() as c:
        r = c.get("/api/v1/models")
        assert_problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_problem(c.get("/api/v1/models", headers={"Authorization": "Bearer nope"}), 401)
        assert_problem(
            c.get(
                "/api/v1/models", headers={"Authorization": "Bearer eaf_000000000000_" + "A" * 43}
            ),
            401,
        )
    with platform.client(platform.viewer) as c:
        r = c.put(f"/api/v1/models/{new_unique_id('m')}/versions/1.0.0", content=b"abc")
        assert "viewer" in assert_problem(r, 403)["detail"]
        assert c.get("/api/v1/models").status_code == 200
        assert_problem(c.post("/api/v1/keys", json={"name": "x", "role": "admin"}), 403)
    with platform.manager(platform.viewer) as mm, pytest.raises(PermissionDeniedError):
        mm.add_model(Model(new_unique_id("m"), model_file(tmp_path)), ModelMetadata("t", "1.0.0"))

    with platform.client(platform.admin) as admin:
        created = admin.post("/api/v1/keys", json={"name": "ci", "role": "deployer"})
        assert created.status_code == 201
        token, key_id = created.json()["token"], created.json()["key"]["key_id"]
        with platform.client(token) as c:
            assert c.get("/api/v1/whoami").json()["role"] == "deployer"
            assert admin.delete(f"/api/v1/keys/{key_id}").json()["revoked_at"]
            assert "revoked" in assert_problem(c.get("/api/v1/models"), 401)["detail"]
        listed = admin.get("/api/v1/keys").json()["items"]
        assert key_id not in {k["key_id"] for k in listed}
    with pytest.raises(AuthenticationError):
        ModelManager(platform.url, token).list_models()


# ---- bad input ----------------------------------------------------------------------


def test_bad_input_is_4xx_problem_json_never_500(platform: Platform, tmp_path: Path) -> None:
    name = new_unique_id("m")
    upload(platform, tmp_path, name, "1.0.0")
    url = f"/api/v1/models/{name}/versions"
    with platform.client(platform.admin) as c:
        cases: list[tuple[httpx.Response, int | tuple[int, ...]]] = [
            (
                c.put(f"{url}/2.0.0", content=b"{}", headers={"Content-Type": "application/json"}),
                415,
            ),
            (
                c.put(
                    f"{url}/2.0.0",
                    content=b"--x\r\n",
                    headers={"Content-Type": "multipart/form-data; boundary=x"},
                ),
                415,
            ),
            (c.put(f"{url}/2.0.0", content=b""), 422),
            (c.put(f"{url}/2.0.0", content=b"x" * (MAX_UPLOAD + 1)), 413),
            (c.put(f"{url}/2.0.0?property=novalue", content=b"x"), 422),
            (c.put(f"{url}/2.0.0?parent_version=old", content=b"x"), 422),
            (
                c.put(
                    f"/api/v1/models/{name}/aliases/prod",
                    content=b"{not json",
                    headers={"Content-Type": "application/json"},
                ),
                422,
            ),
            (c.put(f"/api/v1/models/{name}/aliases/prod", json={"version": "9.9.9"}), 404),
            (c.put(f"/api/v1/models/{name}/aliases/1.0.0", json={"version": "1.0.0"}), 422),
            (c.put(f"/api/v1/models/{name}/aliases/prod", json={"version": "1.0.0", "x": 1}), 422),
            (
                c.patch(
                    f"{url}/1.0.0", content=b"[1,2", headers={"Content-Type": "application/json"}
                ),
                422,
            ),
            (c.patch(f"{url}/1.0.0", json={"tags": "not-a-list"}), 422),
            (c.get(f"/api/v1/models/{new_unique_id('nope')}"), 404),
            (c.get(f"/api/v1/models/{new_unique_id('nope')}/versions"), 404),
            (c.get(f"{url}/7.7.7"), 404),
            (c.get(f"{url}/7.7.7/artifact"), 404),
            (c.get("/api/v1/models?limit=0"), 422),
            (c.get("/api/v1/models?limit=abc"), 422),
            (c.get(f"/api/v1/models/{name}/versions?status=bogus"), 422),
            (c.get("/api/v1/artifacts/" + "0" * 64), 404),
            (c.get("/api/v1/artifacts/not-a-hash"), 422),
            (c.delete("/api/v1/keys/zzz"), 422),
            (c.delete("/api/v1/keys/" + "0" * 12), 404),
            (c.post("/api/v1/keys", json={"name": "x", "role": "root"}), 422),
            (c.get("/api/v1/nothing-here"), 404),
            (c.delete("/api/v1/models"), 405),
        ]
        for path in ("..%2Fx", "a%2Fb", "..", "-x", ".hidden", "a b", "x" * 200):
            cases.append(
                (c.put(f"/api/v1/models/{path}/versions/1.0.0", content=b"x"), (404, 405, 422))
            )
            cases.append((c.get(f"/api/v1/models/{path}"), (404, 422)))
        raw = httpx.Request("GET", platform.url + "/api/v1/models/../x", headers=c.headers)
        cases.append((c.send(raw), (404, 422)))
        for response, status in cases:
            body = assert_problem(response, status)
            assert body["status"] < 500


def test_chunked_upload_over_the_limit_is_refused_and_stores_nothing(
    platform: Platform,
) -> None:
    store_tmp = platform.settings.model_repository.storage_path / "tmp"

    def body() -> Iterator[bytes]:
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield os.urandom(65536)

    with platform.client(platform.deployer) as c:
        try:
            r = c.put(f"/api/v1/models/{new_unique_id('m')}/versions/1.0.0", content=body())
        except httpx.TransportError:
            pass  # the server may close before the client finished sending: also a refusal
        else:
            assert_problem(r, 413)
    assert list(store_tmp.iterdir()) == []


# ---- ranges and damaged artifacts ---------------------------------------------------


def test_ranges_and_digest_headers(platform: Platform, tmp_path: Path) -> None:
    name = new_unique_id("m")
    info = upload(platform, tmp_path, name, "1.0.0", size=CHUNK * 2 + 1000)
    with platform.client(platform.viewer) as c:
        full = c.get(f"/api/v1/models/{name}/versions/1.0.0/artifact").content
        assert hashlib.sha256(full).hexdigest() == info.artifact_id
        for header, want in [
            ("bytes=0-9", full[:10]),
            (f"bytes={CHUNK - 5}-{CHUNK + 5}", full[CHUNK - 5 : CHUNK + 6]),
            ("bytes=-100", full[-100:]),
            (f"bytes={len(full) - 3}-", full[-3:]),
        ]:
            r = c.get(f"/api/v1/artifacts/{info.artifact_id}", headers={"Range": header})
            assert r.status_code == 206 and r.content == want, header
            assert r.headers["content-range"].endswith(f"/{len(full)}")
        r = c.get(f"/api/v1/artifacts/{info.artifact_id}", headers={"Range": f"bytes={len(full)}-"})
        assert_problem(r, 416)
        head = c.head(f"/api/v1/artifacts/{info.artifact_id}")
        assert head.headers["content-length"] == str(len(full))
        assert head.headers["x-content-sha256"] == info.artifact_id
    with platform.client(platform.deployer) as c:
        stored = c.get(f"/api/v1/artifacts/{info.artifact_id}/stored")
        assert stored.content == platform.stored_path(info.artifact_id).read_bytes()
        part = c.get(
            f"/api/v1/artifacts/{info.artifact_id}/stored", headers={"Range": "bytes=96-99"}
        )
        assert part.content == stored.content[96:100]


def test_stored_bytes_are_not_the_plaintext(platform: Platform, tmp_path: Path) -> None:
    marker = os.urandom(32)
    info = upload(platform, tmp_path, new_unique_id("m"), "1.0.0", marker=marker)
    on_disk = platform.stored_path(info.artifact_id).read_bytes()
    assert marker not in on_disk
    assert len(on_disk) > info.size_bytes  # header and one tag per chunk


def _damaged(platform: Platform, tmp_path: Path, damage: str) -> tuple[str, Path]:
    name = new_unique_id("m")
    info = upload(platform, tmp_path, name, "1.0.0", size=CHUNK * 12 + 5)
    path = platform.stored_path(info.artifact_id)
    data = bytearray(path.read_bytes())
    if damage == "flip_late":  # a chunk beyond what is checked before the headers go out
        data[HEADER_LEN + 10 * (CHUNK + 16) + 100] ^= 0x01
    elif damage == "flip_first":
        data[HEADER_LEN + 7] ^= 0x80
    elif damage == "truncate":
        del data[-1:]
    elif damage == "extend":
        data += b"\0" * 16
    path.write_bytes(bytes(data))
    return name, tmp_path / f"{name}.out"


@pytest.mark.parametrize("damage", ["flip_first", "truncate", "extend"])
def test_damage_found_before_sending_is_a_clear_problem(
    platform: Platform, tmp_path: Path, damage: str
) -> None:
    name, dest = _damaged(platform, tmp_path, damage)
    with platform.client(platform.viewer) as c:
        body = assert_problem(c.get(f"/api/v1/models/{name}/versions/1.0.0/artifact"), 500)
    assert body["code"] == "artifact_corrupt" and "damaged" in body["detail"]
    with platform.manager(platform.viewer) as mm, pytest.raises(Exception, match="damaged"):
        mm.download(name, "1.0.0", dest)
    assert not dest.exists()


def test_damage_found_mid_stream_aborts_and_sdk_says_so(platform: Platform, tmp_path: Path) -> None:
    name, dest = _damaged(platform, tmp_path, "flip_late")
    with platform.manager(platform.viewer) as mm:
        with pytest.raises(DownloadIntegrityError, match="connection broke"):
            mm.download(name, "1.0.0", dest)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    with platform.client(platform.viewer) as c, pytest.raises(httpx.RemoteProtocolError):
        c.get(f"/api/v1/models/{name}/versions/1.0.0/artifact")


def test_openapi_and_health(platform: Platform) -> None:
    with platform.client() as c:
        spec = c.get("/openapi.json").json()
        assert "/api/v1/models/{model}/versions/{version}" in spec["paths"]
        assert c.get("/docs").status_code == 200
        assert c.get("/healthz").json() == {"status": "ok", "registry": "ok"}
