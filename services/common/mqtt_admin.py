"""Manage Mosquitto's users, roles and ACLs through the dynamic-security control API.

Commands go as JSON to `$CONTROL/dynamic-security/v1`; the plugin answers the sending
client on `$CONTROL/dynamic-security/v1/response`, echoing our correlation data, which is
how an answer is matched to its command. The topic ACLs of the platform live here too
(`service_role_acls`, `device_role_acls`): Mosquitto 2.0.11's dynamic-security plugin does
not substitute `%c`/`%u` in ACL topics, so each device gets a role of literal topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Literal, NotRequired, Self, TypedDict

import aiomqtt

__all__ = [
    "CONTROL_TOPIC",
    "DEFAULT_PREFIX",
    "RESPONSE_TOPIC",
    "SERVICE_ROLE",
    "Acl",
    "AclType",
    "DynsecAlreadyExistsError",
    "DynsecCommandError",
    "DynsecNotFoundError",
    "DynsecTimeoutError",
    "InvalidTopicSegmentError",
    "MqttAdmin",
    "MqttAdminError",
    "RoleRef",
    "device_role_acls",
    "device_role_name",
    "provision_platform",
    "service_role_acls",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
DEFAULT_PREFIX = "eaf/v1"
SERVICE_ROLE = "eaf-service"

AclType = Literal[
    "publishClientSend",
    "publishClientReceive",
    "subscribeLiteral",
    "subscribePattern",
    "unsubscribeLiteral",
    "unsubscribePattern",
]


class Acl(TypedDict):
    """One ACL entry of a role, as the plugin spells it."""

    acltype: AclType
    topic: str
    allow: bool
    priority: NotRequired[int]


class RoleRef(TypedDict):
    """A role given to a client; the higher priority is checked first."""

    rolename: str
    priority: NotRequired[int]


class MqttAdminError(Exception):
    """Root of the errors of the dynamic-security admin client."""


class DynsecCommandError(MqttAdminError):
    """The plugin answered a command with an error."""

    def __init__(self, command: str, error: str) -> None:
        self.command = command
        self.error = error
        super().__init__(f"dynamic-security command {command!r} failed: {error}")


class DynsecAlreadyExistsError(DynsecCommandError):
    """The client, role or ACL to create exists already."""


class DynsecNotFoundError(DynsecCommandError):
    """The client or role named by the command does not exist."""


class DynsecTimeoutError(MqttAdminError):
    """No answer to a command in time: is the plugin loaded and the user allowed $CONTROL?"""

    def __init__(self, command: str, timeout: float) -> None:
        self.command = command
        self.timeout = timeout
        super().__init__(
            f"no answer to dynamic-security command {command!r} within {timeout:g} s: check "
            "that the broker loads the dynamic-security plugin and that this user has the "
            f"admin role (publish and subscribe on {CONTROL_TOPIC}/#)"
        )


class InvalidTopicSegmentError(MqttAdminError, ValueError):
    """A value that must be one topic level contains '/', a wildcard or is empty."""

    def __init__(self, what: str, value: str) -> None:
        self.what = what
        self.value = value
        super().__init__(
            f"{what} {value!r} cannot be used in an MQTT topic: it must be non-empty and "
            "must not contain '/', '+', '#' or NUL"
        )


def _command_error(command: str, error: str) -> DynsecCommandError:
    lowered = error.lower()
    if "already exists" in lowered:
        return DynsecAlreadyExistsError(command, error)
    if "not found" in lowered:
        return DynsecNotFoundError(command, error)
    return DynsecCommandError(command, error)


class MqttAdmin:
    """Async client for the dynamic-security control API; use as `async with`.

    Commands may run concurrently: each carries its own correlation data and waits for
    its own answer.
    """

    def __init__(
        self,
        *,
        hostname: str,
        port: int = 1883,
        username: str,
        password: str,
        identifier: str | None = None,
        timeout: float = 10.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self._client = aiomqtt.Client(
            hostname,
            port,
            username=username,
            password=password,
            identifier=identifier or f"eaf-admin-{uuid.uuid4().hex[:12]}",
            tls_context=tls_context,
            timeout=timeout,
        )
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        try:
            await self._client.subscribe(RESPONSE_TOPIC, qos=1)
        except BaseException:
            await self._client.__aexit__(None, None, None)
            raise
        self._reader = asyncio.create_task(self._read_responses())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
            self._reader = None
        await self._client.__aexit__(exc_type, exc, tb)

    async def _read_responses(self) -> None:
        try:
            async for message in self._client.messages:
                payload = message.payload
                try:
                    if not isinstance(payload, bytes | bytearray):
                        raise TypeError(type(payload).__name__)
                    responses = json.loads(payload)["responses"]
                except (TypeError, ValueError, KeyError):
                    continue  # not an answer of the plugin: nothing waits for it
                for response in responses:
                    future = self._pending.pop(str(response.get("correlationData")), None)
                    if future is not None and not future.done():
                        future.set_result(response)
        except aiomqtt.MqttError as error:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    async def execute(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send one command and return the `data` of its answer ({} when it has none).

        Raises DynsecCommandError (or a subclass) on an error answer and
        DynsecTimeoutError when no answer comes.
        """
        if self._reader is None:
            raise MqttAdminError("MqttAdmin is not connected: use it as `async with`")
        correlation = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = future
        payload = {"commands": [{"command": command, **fields, "correlationData": correlation}]}
        try:
            await self._client.publish(CONTROL_TOPIC, json.dumps(payload), qos=1)
            async with asyncio.timeout(self.timeout):
                response = await future
        except TimeoutError:
            raise DynsecTimeoutError(command, self.timeout) from None
        finally:
            self._pending.pop(correlation, None)
        if response.get("error"):
            raise _command_error(command, str(response["error"]))
        data = response.get("data")
        return data if isinstance(data, dict) else {}

    async def create_client(
        self,
        username: str,
        password: str,
        *,
        roles: Iterable[str | RoleRef] = (),
        textname: str | None = None,
        clientid: str | None = None,
    ) -> None:
        """Create a client that logs in with `username`/`password` and holds `roles`.

        `clientid`, if given, is the only client id this user may connect with.
        """
        fields: dict[str, Any] = {
            "username": username,
            "password": password,
            "roles": [{"rolename": r} if isinstance(r, str) else dict(r) for r in roles],
        }
        if textname is not None:
            fields["textname"] = textname
        if clientid is not None:
            fields["clientid"] = clientid
        await self.execute("createClient", **fields)

    async def delete_client(self, username: str) -> None:
        """Delete a client; it is disconnected if connected."""
        await self.execute("deleteClient", username=username)

    async def get_client(self, username: str) -> dict[str, Any]:
        """Return the plugin's description of a client (roles, groups, client id)."""
        data = await self.execute("getClient", username=username)
        client = data.get("client")
        return client if isinstance(client, dict) else {}

    async def list_clients(self) -> list[str]:
        """Return the usernames of all clients."""
        data = await self.execute("listClients", verbose=False, count=-1, offset=0)
        return [str(name) for name in data.get("clients", [])]

    async def set_client_password(self, username: str, password: str) -> None:
        """Change a client's password."""
        await self.execute("setClientPassword", username=username, password=password)

    async def add_client_role(
        self, username: str, rolename: str, *, priority: int | None = None
    ) -> None:
        """Give a client one more role."""
        fields: dict[str, Any] = {"username": username, "rolename": rolename}
        if priority is not None:
            fields["priority"] = priority
        await self.execute("addClientRole", **fields)

    async def remove_client_role(self, username: str, rolename: str) -> None:
        """Take a role away from a client."""
        await self.execute("removeClientRole", username=username, rolename=rolename)

    async def create_role(
        self, name: str, *, acls: Iterable[Acl] = (), textname: str | None = None
    ) -> None:
        """Create a role with its ACLs."""
        fields: dict[str, Any] = {"rolename": name, "acls": [dict(acl) for acl in acls]}
        if textname is not None:
            fields["textname"] = textname
        await self.execute("createRole", **fields)

    async def delete_role(self, name: str) -> None:
        """Delete a role; clients holding it lose it."""
        await self.execute("deleteRole", rolename=name)

    async def get_role(self, name: str) -> dict[str, Any]:
        """Return the plugin's description of a role, with its ACLs."""
        data = await self.execute("getRole", rolename=name)
        role = data.get("role")
        return role if isinstance(role, dict) else {}

    async def add_role_acl(
        self, rolename: str, *, acltype: AclType, topic: str, allow: bool, priority: int = 0
    ) -> None:
        """Add one ACL to a role (an ACL with the same type and topic is an error)."""
        await self.execute(
            "addRoleACL",
            rolename=rolename,
            acltype=acltype,
            topic=topic,
            allow=allow,
            priority=priority,
        )

    async def remove_role_acl(self, rolename: str, *, acltype: AclType, topic: str) -> None:
        """Remove one ACL from a role."""
        await self.execute("removeRoleACL", rolename=rolename, acltype=acltype, topic=topic)

    async def set_default_acl_access(
        self,
        *,
        publish_client_send: bool | None = None,
        publish_client_receive: bool | None = None,
        subscribe: bool | None = None,
        unsubscribe: bool | None = None,
    ) -> None:
        """Set what is allowed when no ACL of a client's roles matches (None: unchanged)."""
        wanted = {
            "publishClientSend": publish_client_send,
            "publishClientReceive": publish_client_receive,
            "subscribe": subscribe,
            "unsubscribe": unsubscribe,
        }
        acls = [
            {"acltype": kind, "allow": allow} for kind, allow in wanted.items() if allow is not None
        ]
        if acls:
            await self.execute("setDefaultACLAccess", acls=acls)

    async def get_default_acl_access(self) -> dict[str, bool]:
        """Return the default access per ACL type."""
        data = await self.execute("getDefaultACLAccess")
        return {str(a["acltype"]): bool(a["allow"]) for a in data.get("acls", [])}


def _check_segment(what: str, value: str) -> str:
    if not value or any(c in value for c in "/+#\0"):
        raise InvalidTopicSegmentError(what, value)
    return value


def _acls(acltype: AclType, topics: Sequence[str]) -> list[Acl]:
    return [{"acltype": acltype, "topic": topic, "allow": True} for topic in topics]


def service_role_acls(prefix: str = DEFAULT_PREFIX) -> list[Acl]:
    """ACLs of the platform services' role: everything under `prefix`, shared subs too.

    Mosquitto 2.0.11 checks a shared subscription's ACL against the whole filter,
    `$share/<group>/<topic>`, so the `$share/+/` forms are listed alongside the plain ones;
    delivered messages are checked against their real topic.
    """
    everything = f"{prefix}/#"
    shared = f"$share/+/{prefix}/#"
    return [
        *_acls("publishClientSend", [everything]),
        *_acls("publishClientReceive", [everything]),
        *_acls("subscribePattern", [everything, shared]),
        *_acls("unsubscribePattern", [everything, shared]),
    ]


def device_role_name(device_id: str) -> str:
    """Name of the role that holds one device's ACLs."""
    return f"eaf-device-{_check_segment('device id', device_id)}"


def device_role_acls(device_id: str, prefix: str = DEFAULT_PREFIX) -> list[Acl]:
    """ACLs of one device's role, literal topics (see the topic table in DESIGN.md).

    The device may publish only its own state, online and metrics, and chunk requests;
    it may subscribe to and receive only its own desired state and chunks, and the
    artifact broadcasts.
    """
    own = f"{prefix}/devices/{_check_segment('device id', device_id)}"
    sends = [f"{own}/state", f"{own}/online", f"{own}/metrics", f"{prefix}/artifacts/+/get"]
    reads = [f"{own}/desired", f"{own}/chunks", f"{prefix}/artifacts/+/chunks"]
    return [
        *_acls("publishClientSend", sends),
        *_acls("subscribePattern", reads),
        *_acls("publishClientReceive", reads),
        *_acls("unsubscribePattern", reads),
    ]


async def provision_platform(admin: MqttAdmin, *, prefix: str = DEFAULT_PREFIX) -> None:
    """Deny what no role allows, and create the services' role; safe to run again.

    The plugin's own defaults let every client receive any message it can subscribe to;
    here a client receives only what one of its roles allows.
    """
    await admin.set_default_acl_access(
        publish_client_send=False,
        publish_client_receive=False,
        subscribe=False,
        unsubscribe=True,
    )
    acls = service_role_acls(prefix)
    try:
        await admin.create_role(SERVICE_ROLE, acls=acls, textname="EdgeAIForge services")
    except DynsecAlreadyExistsError:
        for acl in acls:
            with contextlib.suppress(DynsecAlreadyExistsError):
                await admin.add_role_acl(
                    SERVICE_ROLE, acltype=acl["acltype"], topic=acl["topic"], allow=acl["allow"]
                )
