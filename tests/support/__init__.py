"""What the tests and the benchmarks share: servers (``servers``), settings (``settings``),
the platform in-process or as a process (``api``), ONNX models (``models``), deployment,
metrics and resilience helpers, and the pytest fixtures (``fixtures``, loaded by
``tests/conftest.py``)."""
