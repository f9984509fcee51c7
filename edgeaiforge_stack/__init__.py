"""EdgeAIForge's local stack: the servers and services of the platform on one host, the
simulated fleet, and the ``edgeaiforge up | down | status | fleet`` commands.

Part of the platform install (``pip install 'edgeaiforge[platform]'``); the SDK does not
import it. Its commands reach the ``edgeaiforge`` command through the
``edgeaiforge.commands`` entry-point group.
"""

__all__: list[str] = []
