"""Sub-commands of the ``edgeaiforge`` command, one module per area (mounted in ``cli.py``)."""
