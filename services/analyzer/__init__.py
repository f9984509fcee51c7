"""The model analyzer: what a validated model costs, needs and changed.

The service lives in ``services.analyzer.app`` (``create_service``); the analysis itself
in ``services.analyzer.domain``. See ``docs/analysis.md``.
"""

__all__: list[str] = []
