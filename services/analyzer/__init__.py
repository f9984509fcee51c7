"""The model analyzer: what a validated model costs, needs and changed.

The service is ``services.analyzer.app.create_service``; the analysis itself
in ``services.analyzer.domain``. See ``docs/analysis.md``.
"""

__all__: list[str] = []
