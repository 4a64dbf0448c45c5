"""The shape of lib/: families with docstrings, no import circles, one Streamlit importer, lib-internal
imports at module top (except where a comment says it keeps TensorFlow lazy), and no TensorFlow
when the home page opens, `python -m lib --help` runs or the data package is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
FAMILIES = ("data", "models", "train", "evaluate", "serve", "ui")


def _modules() -> dict[str, Path]:
    found = {}
    for path in LIB.rglob("*.py"):
        name = ".".join(("lib", *path.relative_to(LIB).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = path
    return found


def _top_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    deps = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lib"):
            if node.module in modules:
                deps.add(node.module)
            deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name in modules)
    return deps


def test_every_family_is_a_package_with_a_docstring():
    for family in FAMILIES:
        init = LIB / family / "__init__.py"
        assert init.is_file(), family
        assert ast.get_docstring(ast.parse(init.read_text())), f"lib/{family}/__init__.py says what it owns"
    for name, path in _modules().items():
        assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has a module docstring"


def test_there_are_no_import_circles():
    modules = _modules()
    graph = {name: _top_level_imports(path, modules) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join([*trail[trail.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_only_the_ui_family_imports_streamlit():
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        uses = any(
            (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "streamlit" for a in n.names))
            or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "streamlit")
            for n in ast.walk(tree)
        )
        assert not uses or name.startswith("lib.ui"), f"{name} imports Streamlit"


def test_lib_imports_sit_at_module_top_unless_they_keep_tensorflow_lazy():
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                module = (
                    inner.module
                    if isinstance(inner, ast.ImportFrom)
                    else (inner.names[0].name if isinstance(inner, ast.Import) else "")
                )
                if module and module.startswith("lib"):
                    line = lines[inner.lineno - 1]
                    assert "Keras" in line or "TensorFlow" in line or "lazy" in line, (
                        f"{name}:{inner.lineno} imports {module} inside {node.name} without saying why"
                    )


def _imported_after(code: str) -> str:
    probe = code + "\nimport sys\nprint('TF' if {'tensorflow', 'keras'} & set(sys.modules) else 'clean')\n"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_the_home_page_opens_without_tensorflow():
    code = (
        "from streamlit.testing.v1 import AppTest\n"
        "at = AppTest.from_file('streamlit_app.py', default_timeout=120).run()\n"
        "assert not at.exception, at.exception\n"
    )
    assert _imported_after(code) == "clean"


def test_cli_help_and_the_data_package_import_no_tensorflow():
    code = (
        "import contextlib, io\n"
        "from lib import cli\n"
        "import lib.data.feeder, lib.data.images, lib.data.layouts, lib.data.scan, lib.data.sources, lib.data.splits\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['train', '--help'])\n"
    )
    assert _imported_after(code) == "clean"
