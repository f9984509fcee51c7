"""The model validator: every upload is checked in a sandbox before anything ships.

The service is ``services.validator.app.create_service``. This package
imports nothing on purpose: a sandboxed worker imports its check modules and should not
pay for the service's imports. The sandbox itself is ``modelkit``'s. See
``docs/validation.md``.
"""

__all__: list[str] = []
