"""The model validator: every upload is checked in a sandbox before anything ships.

The service lives in ``services.validator.app`` (``create_service``). This package
imports nothing on purpose: the sandboxed worker starts from it and should not pay for
the service's imports. See ``docs/validation.md``.
"""

__all__: list[str] = []
