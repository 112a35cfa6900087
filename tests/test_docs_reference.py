"""Every public name has an entry in the API reference (docs/reference/).

The reference pages are written by hand (which names go on which page, in
which order) and rendered from the docstrings by mkdocstrings, one
``::: module.Name`` line per entry. ``mkdocs build --strict`` (.ci/docs.sh)
fails on an entry that names nothing; this test fails on the other mistake, a
public name with no entry, so a name added to an ``__all__`` without its
reference entry fails CI and the message says which line to add.

The public modules are ``gpupool`` itself, its modules without a leading
underscore (``gpupool.testing``, ``gpupool.sim``, ``gpupool.providers``, ...)
and each module of ``gpupool.integrations``; a module's public names are its
``__all__``, read from the source so that an integration's extra need not be
installed to check it. A name that is the very object another entry documents
(``gpupool.testing.FakeGPUProvider`` is ``gpupool.FakeGPUProvider``) counts
as documented.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpupool"
REFERENCE = ROOT / "docs" / "reference"
#: An mkdocstrings entry: ``::: gpupool.Name`` at the start of a line.
ENTRY = re.compile(r"^:::[ \t]+([\w.]+)", re.MULTILINE)


def _module_source(path: Path) -> Path | None:
    """The file that defines the module at ``path`` (a .py file or a package)."""
    if path.is_dir():
        init = path / "__init__.py"
        return init if init.is_file() else None
    return path if path.suffix == ".py" else None


def _static_all(source: Path) -> list[str] | None:
    """The module's ``__all__`` as written in its source, or None if it has none."""
    for node in ast.parse(source.read_text(), filename=str(source)).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                assert node.value is not None
                names = ast.literal_eval(node.value)
                assert isinstance(names, list | tuple), f"{source}: __all__ is not a list"
                return list(names)
    return None


def _children(package: Path, dotted: str) -> dict[str, Path]:
    found = {}
    for child in sorted(package.iterdir()):
        name = child.stem if child.suffix == ".py" else child.name
        if name.startswith("_") or _module_source(child) is None:
            continue
        found[f"{dotted}.{name}"] = child
    return found


def public_modules() -> dict[str, list[str]]:
    """Each public module and its public names."""
    modules = {"gpupool": PACKAGE, **_children(PACKAGE, "gpupool")}
    integrations = modules.pop("gpupool.integrations", None)
    if integrations is not None:
        modules.update(_children(integrations, "gpupool.integrations"))
    result = {}
    for dotted, path in modules.items():
        source = _module_source(path)
        assert source is not None
        names = _static_all(source)
        if names is not None:
            result[dotted] = names
    return result


def reference_entries() -> set[str]:
    return {m for page in REFERENCE.glob("*.md") for m in ENTRY.findall(page.read_text())}


def _documented_elsewhere(module: str, name: str, entries: set[str]) -> bool:
    """Whether ``module.name`` is the same object as an entry of the same name."""
    value = getattr(importlib.import_module(module), name)
    for entry in entries:
        owner, _, entry_name = entry.rpartition(".")
        if entry_name == name and owner != module:
            try:
                other = getattr(importlib.import_module(owner), name)
            except (ImportError, AttributeError):
                continue
            if other is value:
                return True
    return False


def test_the_public_modules_are_found() -> None:
    """The walk finds what is certainly public: if it found nothing, the next test would pass."""
    modules = public_modules()
    assert "GPUResourcePool" in modules["gpupool"]
    assert "FakeGPUProvider" in modules["gpupool.testing"]
    assert modules["gpupool.integrations.optuna"] == ["OptunaStrategy"]
    assert modules["gpupool.integrations.ray"] == ["RayCluster"]
    assert "gpupool.GPUResourcePool" in reference_entries()


def test_every_public_name_has_a_reference_entry() -> None:
    entries = reference_entries()
    missing = [
        f"{module}.{name}"
        for module, names in public_modules().items()
        for name in names
        if f"{module}.{name}" not in entries and not _documented_elsewhere(module, name, entries)
    ]
    assert not missing, (
        "public names with no entry in the API reference; add a line `::: NAME` for each "
        f"to a page of docs/reference/ (and the page to mkdocs.yml's nav if it is new): {missing}"
    )


def test_reference_entries_name_public_objects() -> None:
    """An entry renders a public path (``gpupool.X``), never a private module's."""
    private = sorted(e for e in reference_entries() if any(p.startswith("_") for p in e.split(".")))
    assert not private, f"reference entries through private modules: {private}"
