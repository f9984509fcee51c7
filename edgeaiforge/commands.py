"""What command groups added to the ``edgeaiforge`` command share with the built-in ones.

A distribution adds commands by naming typer apps in the ``edgeaiforge.commands``
entry-point group (``up = "edgeaiforge_stack.commands:up_app"``); each is mounted under
its entry point's name. Such a group uses the same consoles, ``--json`` option, client
made from the root options (``--url``, ``--token``) and one-line errors as the rest.
"""

from edgeaiforge._cli._common import JsonOption, console, err_console, manager
from edgeaiforge._cli._errors import one_line

__all__ = ["ENTRY_POINT_GROUP", "JsonOption", "console", "err_console", "manager", "one_line"]

ENTRY_POINT_GROUP = "edgeaiforge.commands"
