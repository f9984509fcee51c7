"""``python -m services.api [--config FILE]`` serves the REST API on ``api.host:api.port``."""

from __future__ import annotations

import sys

from services.api.app import ApiServerError, create_api_server
from services.common.runner import run_service


def main() -> None:
    try:
        run_service("api", create_api_server)
    except ApiServerError as exc:
        print(f"api: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
