"""The performance part of ``ModelManager``: ``get_model_stats``."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from edgeaiforge._http import HttpClient
from schemas.stats import ModelStats

__all__ = ["StatsMixin"]


class StatsMixin:
    """Methods of ``ModelManager`` that read ``/api/v1/models/{name}/stats``."""

    _http: HttpClient

    def get_model_stats(
        self,
        name: str,
        *,
        window: float = 3600.0,
        end: datetime | None = None,
        version: str | None = None,
    ) -> ModelStats:
        """Inference performance of ``name`` per version and device over ``window`` seconds."""
        params: dict[str, str | float] = {"window": window}
        if end is not None:
            params["end"] = end.isoformat()
        if version is not None:
            params["version"] = version
        stats = self._http.call(
            "GET", f"/api/v1/models/{quote(name, safe='')}/stats", ModelStats, params=params
        )
        return stats
