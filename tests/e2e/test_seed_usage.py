"""The seed's usage example, in Python, against running NATS, registry, validator and API.

The seed's Rust example reads, in Python::

    manager = ModelManager()
    model = Model("my_model", "/path/to/model.onnx")
    metadata = ModelMetadata("Image Classification", "1.0.0")
    manager.add_model(model, metadata)

``add_model`` returns once the validator has passed the version. (``deploy_model`` and
``get_model_stats`` belong to the deployer and the tracker: tests/e2e/test_seed_full.py.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edgeaiforge import ConfigurationError, Model, ModelFileError, ModelManager, ModelMetadata
from services.validator.app import create_service as create_validator
from tests.support.api import create_api_key, serve_in_thread
from tests.support.models import tiny_model, to_bytes
from tests.support.settings import platform_settings


async def test_seed_usage_example(
    tmp_path: Path, nats_server: Any, monkeypatch: pytest.MonkeyPatch, unique_id: Any
) -> None:
    settings = platform_settings(tmp_path, nats_url=nats_server.url)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(to_bytes(tiny_model()))
    name = unique_id("my_model_")
    with serve_in_thread(settings, durable_prefix=unique_id("registry-")) as url:
        monkeypatch.setenv("EAF_API_URL", url)
        monkeypatch.setenv("EAF_API_TOKEN", create_api_key(settings, role="deployer"))
        async with create_validator(settings, durable=unique_id("validator-")):

            def seed() -> None:
                # --- the seed's example ---------------------------------------------------
                model_manager = ModelManager()
                model = Model(name, str(onnx_file))
                metadata = ModelMetadata("Image Classification", "1.0.0")
                model_manager.add_model(model, metadata)
                # -------------------------------------------------------------------------

                listed = model_manager.list_models(prefix=name)
                assert [m.name for m in listed.items] == [name]
                assert listed.items[0].deployable_version == "1.0.0"
                version = model_manager.get_version(name, "1.0.0")
                assert version.status == "validated"
                assert version.metadata.task == "Image Classification"
                assert version.sequence == 1 and version.size_bytes == onnx_file.stat().st_size
                back = model_manager.download(name, "1.0.0", tmp_path / "back.onnx")
                assert back.read_bytes() == onnx_file.read_bytes()
                model_manager.close()

            await asyncio.to_thread(seed)


def test_seed_usage_errors_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EAF_API_URL", raising=False)
    monkeypatch.delenv("EAF_API_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="EAF_API_URL"):
        ModelManager()
    with pytest.raises(ModelFileError, match="does not exist"):
        Model("my_model", "/path/to/model.onnx")
    with pytest.raises(ModelFileError, match="not a regular file"):
        Model("my_model", tmp_path)
