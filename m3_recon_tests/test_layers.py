"""Layering: only the Dagster wiring (``m3_recon/defs/``) and the command-line entry points import ``m3_recon.defs``.

Domain code (reconcile, journals, posting), the vendor clients and shared modules must work without the
Dagster wiring, so a newcomer can read and test them on their own.
"""

import ast

from m3_recon.settings import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "m3_recon"
# Entry points that build Dagster resources or load the code location on purpose.
WIRING_ENTRY_POINTS = {"definitions.py", "cli.py", "demo.py", "doctor.py", "loop_cli.py", "exceptions_cli.py"}


def imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_outside_defs_imports_the_dagster_wiring():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "defs" or str(relative) in WIRING_ENTRY_POINTS:
            continue
        wiring = sorted(name for name in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
                        if name == "m3_recon.defs" or name.startswith("m3_recon.defs."))
        offenders += [f"m3_recon/{relative} imports {name}" for name in wiring]
    assert offenders == []


def test_the_check_sees_an_import_of_the_wiring():
    tree = ast.parse("from m3_recon.defs.m3.resources import M3Resource\nfrom m3_recon import defs\n")
    assert {"m3_recon.defs.m3.resources", "m3_recon.defs"} <= imported_modules(tree)
