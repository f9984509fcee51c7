"""A release pipeline: publish a new model version and roll it out as a canary, over NATS.

The model file goes up over HTTP (model bytes never travel on the bus); everything else
is a command on ``eaf.cmd.>`` sent with the ``integrator`` user's credentials, and the
progress is read from the events. Only ``nats-py`` and ``httpx`` are needed.

    python examples/pipeline_release.py model.onnx --name detector --version 1.3.0 \\
        --nats nats://127.0.0.1:4222 --api http://127.0.0.1:8000 --labels site=lab

Credentials come from the environment: ``EAF_NATS_PASSWORD`` (the integrator's NATS
password) and ``EAF_API_TOKEN`` (an API key with the ``deployer`` role, for the upload).
Exit status 0 when the rollout succeeded, 1 when it did not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg


class ReleaseError(Exception):
    """The release could not go on; the message says why."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model_file", type=Path, help="the ONNX file to release")
    p.add_argument("--name", required=True, help="model name in the registry")
    p.add_argument("--version", required=True, help="semantic version of this release")
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    p.add_argument("--user", default="integrator", help="NATS user (default: integrator)")
    p.add_argument("--api", default="http://127.0.0.1:8000", help="REST API base URL")
    p.add_argument("--actor", default="ci:release-pipeline", help="recorded as the sender")
    p.add_argument("--alias", default="candidate", help="alias to point at the new version")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--labels", help="devices whose labels match all, e.g. site=lab,hw=v2")
    target.add_argument("--group", help="devices of this group")
    target.add_argument("--device", help="one device")
    p.add_argument("--waves", default="1,50%,100%", help="cumulative wave sizes")
    p.add_argument("--error-threshold", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole rollout")
    return p.parse_args(argv)


def _target(args: argparse.Namespace) -> dict[str, Any]:
    if args.device:
        return {"device_id": args.device}
    if args.group:
        return {"group": args.group}
    pairs = [item.split("=", 1) for item in args.labels.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise ReleaseError(f"--labels {args.labels!r}: use key=value,key=value")
    return {"labels": dict(pairs)}


async def command(nc: Client, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one command; its result, or ``ReleaseError`` with the platform's reason."""
    reply = await nc.request(subject, json.dumps(body).encode(), timeout=30)
    data: dict[str, Any] = json.loads(reply.data)
    if set(data) == {"error"}:
        err = data["error"]
        raise ReleaseError(f"{subject}: {err['code']} ({err['status']}): {err['detail']}")
    return data


async def command_when_validated(
    nc: Client, subject: str, body: dict[str, Any], *, attempts: int = 50
) -> dict[str, Any]:
    """``command``, retried briefly while the platform still reports the version validating."""
    for _ in range(attempts - 1):
        try:
            return await command(nc, subject, body)
        except ReleaseError as exc:
            if "conflict" not in str(exc) or "is validating" not in str(exc):
                raise
        await asyncio.sleep(0.2)
    return await command(nc, subject, body)


async def upload(api: str, token: str, path: Path) -> dict[str, Any]:
    """Store the file's bytes; answers their artifact id and size."""
    data = await asyncio.to_thread(path.read_bytes)
    async with httpx.AsyncClient(base_url=api, timeout=300) as http:
        response = await http.post(
            "/api/v1/artifacts",
            content=data,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/octet-stream",
            },
        )
    if response.status_code != 201:
        raise ReleaseError(f"upload refused ({response.status_code}): {response.text}")
    stored: dict[str, Any] = response.json()
    return stored


async def release(args: argparse.Namespace, *, password: str, api_token: str) -> bool:
    """Upload, register, wait for validation, alias it, roll it out; True on success."""
    nc = await nats.connect(
        args.nats,
        user=args.user,
        password=password,
        # The server lets each user read replies only under its own inbox prefix.
        inbox_prefix=f"_INBOX.{args.user}",
    )
    events: asyncio.Queue[Msg] = asyncio.Queue()
    try:
        # Subscribe before acting, so no event can slip past.
        for subject in ("eaf.model.validated", "eaf.model.rejected", "eaf.deployment.>"):
            await nc.subscribe(subject, cb=events.put)
        stored = await upload(args.api, api_token, args.model_file)
        version = await command(
            nc,
            "eaf.cmd.model.register_version",
            {"actor": args.actor, "model": args.name, "version": args.version,
             "artifact_id": stored["artifact_id"], "size_bytes": stored["size_bytes"],
             "metadata": {"source_url": str(args.model_file.resolve().as_uri())}},
        )  # fmt: skip
        print(f"registered {version['model']} {version['version']} ({version['status']})")
        async with asyncio.timeout(args.timeout):
            while True:
                msg = await events.get()
                body = json.loads(msg.data)
                if (body.get("model"), body.get("version")) != (args.name, args.version):
                    continue
                if msg.subject == "eaf.model.rejected":
                    print(f"rejected by validation: {body.get('reason')}")
                    return False
                if msg.subject == "eaf.model.validated":
                    print("validated")
                    break
            await command(
                nc,
                "eaf.cmd.model.set_alias",
                {"actor": args.actor, "model": args.name, "alias": args.alias,
                 "version": args.version},
            )  # fmt: skip
            # The registry records the verdict from the same event, an instant later:
            # until it has, the deployer still sees the version as validating. The command
            # may be sent more than once: its request_id makes every send after a lost
            # reply answer the deployment the first one started.
            deployment = await command_when_validated(
                nc,
                "eaf.cmd.deployment.create",
                {"actor": args.actor, "request_id": f"release-{uuid.uuid4()}",
                 "model": args.name, "version": args.alias,
                 "target": _target(args), "strategy": "waves",
                 "waves": args.waves.split(","), "success_threshold": 1.0,
                 "error_threshold": args.error_threshold, "auto_rollback": True},
            )  # fmt: skip
            ident = deployment["deployment_id"]
            print(f"deployment {ident}: {len(deployment['targets'])} devices, waves {args.waves}")
            while True:
                msg = await events.get()
                body = json.loads(msg.data)
                if body.get("deployment_id") != ident:
                    continue
                if msg.subject == "eaf.deployment.target.updated":
                    print(f"  {body['device_id']}: {body['state']}")
                elif msg.subject == "eaf.deployment.completed":
                    print(f"deployment {ident}: {body['outcome']}")
                    return bool(body["outcome"] == "succeeded")
    finally:
        await nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the release; the process's exit status."""
    args = parse_args(argv)
    password = os.environ.get("EAF_NATS_PASSWORD", "")
    token = os.environ.get("EAF_API_TOKEN", "")
    if not password or not token:
        print("set EAF_NATS_PASSWORD and EAF_API_TOKEN", file=sys.stderr)
        return 2
    try:
        ok = asyncio.run(release(args, password=password, api_token=token))
    except (ReleaseError, OSError, TimeoutError) as exc:
        print(f"release failed: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
