"""The key commands as an operator runs them: ``python -m services.registry rotate-kek``
killed half-way and run again."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from schemas import crypto
from services.common.artifacts import ArtifactStore, kek_usage
from services.common.keys import KeyRing, kek_pem

CHUNK = 4096
ROOT = Path(__file__).resolve().parents[2]


async def stream(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def read_all(store: ArtifactStore, aid: str) -> bytes:
    return b"".join([p async for p in store.iter_plaintext(aid)])


async def test_the_rotate_kek_command_resumes_after_a_kill(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "old.key").write_bytes(old)
    (keys / "new.pem").write_bytes(kek_pem(new))
    writer = ArtifactStore(root=tmp_path / "models", kek=old, chunk_size=CHUNK)
    artifacts = {}
    for i in range(150):
        data = os.urandom(100 + i)
        artifacts[(await writer.put(stream(data))).info.artifact_id] = data
    config = tmp_path / "config.toml"
    config.write_text(
        f'[model_repository]\nstorage_path = "{tmp_path / "models"}"\n'
        f"[deployment]\nchunk_size = {CHUNK}\n"
        f'[security]\nencryption_key_path = "{keys / "new.pem"}"\n'
        f'previous_encryption_key_paths = ["{keys / "old.key"}"]\n'
        f'signing_key_path = "{keys / "signing.pem"}"\n'
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "db.sqlite"}"\n'
    )
    cmd = [
        sys.executable,
        "-m",
        "services.registry",
        "rotate-kek",
        "--verbose",
        "--config",
        str(config),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stderr is not None
    for _ in range(20):  # kill it after 20 artifacts
        assert proc.stderr.readline().startswith(b"rewrapped ")
    proc.kill()
    proc.wait()
    store = ArtifactStore(
        root=tmp_path / "models", kek=KeyRing(active=new, previous=(old,)), chunk_size=CHUNK
    )
    usage = kek_usage(store)
    assert 20 <= usage[crypto.kek_id(new)] < 150
    assert usage[crypto.kek_id(old)] > 0

    check = subprocess.run([*cmd[:4], "--check", *cmd[5:]], cwd=ROOT, capture_output=True)
    assert check.returncode == 1, check.stderr  # old KEK still needed

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"KEK {crypto.kek_id(old)} wraps nothing now" in again.stderr
    new_only = ArtifactStore(root=tmp_path / "models", kek=new, chunk_size=CHUNK)
    for aid, data in artifacts.items():
        assert await read_all(new_only, aid) == data
