"""An import-linter contract that import-linter lacks: private modules stay private.

A module whose name starts with ``_`` (``edge_runtime._transfer``, ``edgeaiforge._cli._common``)
belongs to the package above its first private name (``edge_runtime``, ``edgeaiforge``):
only modules inside that package import it. Everything else goes through the
package's public names, so a package can rearrange its insides without breaking anyone.
"""

from __future__ import annotations

import grimp
from importlinter import Contract, ContractCheck, fields, output


class PrivateModulesContract(Contract):
    """``containers``: the root packages whose private modules are checked."""

    type_name = "private_modules"

    containers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        broken: list[str] = []
        for root in self.containers:  # type: ignore[attr-defined]
            for module in sorted(graph.find_descendants(root)):
                owner = _owner(module)
                if owner is None:
                    continue
                for importer in sorted(graph.find_modules_that_directly_import(module)):
                    if importer == owner or importer.startswith(owner + "."):
                        continue
                    details = graph.get_import_details(importer=importer, imported=module)
                    lines = ", ".join(str(d["line_number"]) for d in details)
                    broken.append(f"{importer} -> {module} (l.{lines})")
        return ContractCheck(kept=not broken, warnings=[], metadata={"broken": broken})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["broken"]:
            output.print_error(f"- {line}", bold=False)
        output.new_line()
        output.print("Import the package's public name instead, or make the module public.")


def _owner(module: str) -> str | None:
    """The package above the first private name in ``module``; None if it has none."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None
