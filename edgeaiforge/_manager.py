"""``ModelManager``: the SDK's entry point. Each area of the platform adds its methods as a
mixin (``_registry.RegistryMixin`` for the model repository) listed in the class bases."""

from __future__ import annotations

import os
from types import TracebackType

from edgeaiforge._deploy import DeployMixin
from edgeaiforge._errors import ConfigurationError
from edgeaiforge._http import DEFAULT_TIMEOUT, HttpClient
from edgeaiforge._keys import KeysMixin
from edgeaiforge._registry import RegistryMixin
from edgeaiforge._stats import StatsMixin

__all__ = ["ENV_TOKEN", "ENV_URL", "ModelManager"]

ENV_URL = "EAF_API_URL"
ENV_TOKEN = "EAF_API_TOKEN"  # noqa: S105 (a variable name, not a secret)


class ModelManager(RegistryMixin, StatsMixin, DeployMixin, KeysMixin):
    """A connection to the EdgeAIForge API.

    ``ModelManager()`` reads ``EAF_API_URL`` and ``EAF_API_TOKEN``; arguments win over them.
    Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        url = url or os.environ.get(ENV_URL)
        if token is None:
            # Only a missing token falls back: an explicit "" is refused by HttpClient.
            token = os.environ.get(ENV_TOKEN) or None
        if not url:
            raise ConfigurationError("API URL", ENV_URL)
        if token is None:
            raise ConfigurationError("API token", ENV_TOKEN)
        self.url = url.rstrip("/")
        self._http = HttpClient(self.url, token, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelManager(url={self.url!r})"
