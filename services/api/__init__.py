"""The REST API gateway (FastAPI): models, versions, aliases, artifacts, API keys.

Other areas add a router module under ``services/api/routes`` and one line to
``services.api.app.ROUTERS``; ``services.api.auth`` gives them authentication and roles.
"""

from services.api.app import create_api_server, create_app

__all__ = ["create_api_server", "create_app"]
