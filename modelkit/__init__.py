"""What the validator, the analyzer and the device share about running ONNX models.

The sandbox that runs untrusted models in confined worker processes (``sandbox``,
``ahead``, ``files``, ``outcome``, ``probe``), the tasks both services run in it
(``tasks``), the ONNX and onnxruntime helpers (``onnx_utils``, ``inputs``, ``sessions``,
``results``), the device's external-data rewrite (``external``) and crash-safe file
writes (``durable``). It imports only ``schemas`` and third-party libraries, never
``services`` or ``edge_runtime``.

This package imports nothing on purpose: the sandboxed worker (``python -I -m
modelkit._worker``) starts from it, and the device imports ``modelkit.external`` alone;
neither should pay for the rest. See ``docs/validation.md`` ("modelkit").
"""

__all__: list[str] = []
