"""The package's layers: imports point down (core < data < parallel < run < tools < cli), with no cycle."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Bottom to top; a module may import its own layer and those below it.
LAYERS = ["fmjax.errors", "fmjax.config", "fmjax.core", "fmjax.data", "fmjax.parallel", "fmjax.run", "fmjax.tools", "fmjax.cli"]


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, names in os.walk(os.path.join(ROOT, "fmjax")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The fmjax modules `path` imports, at its top or inside functions."""
    imported = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in imported if name in modules}


def _layer(module: str) -> int:
    return max(i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + "."))


MODULES = _modules()
GRAPH = {module: _imports(path, MODULES) - {module} for module, path in MODULES.items() if module != "fmjax"}


def test_every_module_belongs_to_a_layer():
    assert all(any(m == layer or m.startswith(layer + ".") for layer in LAYERS) for m in GRAPH)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_the_layers(module):
    upward = sorted(name for name in GRAPH[module] if _layer(name) > _layer(module) and name != "fmjax")
    assert upward == [], f"{module} imports a higher layer"


def test_no_import_cycle():
    state = {}

    def visit(module, path):
        state[module] = "open"
        for name in sorted(GRAPH.get(module, ())):
            if state.get(name) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path, module, name]))
            if name not in state:
                visit(name, [*path, module])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_no_module_is_over_300_lines():
    lengths = {module: sum(1 for _ in open(path)) for module, path in MODULES.items()}
    assert {m: n for m, n in lengths.items() if n > 300} == {}


def test_the_core_imports_without_tensorflow_orbax_or_torch():
    code = (
        "import sys, fmjax, fmjax.core.build, fmjax.core.steps, fmjax.core.losses\n"
        "print(sorted(m for m in ('tensorflow', 'orbax', 'torch', 'tensorflow_datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_the_readmes_layout_names_every_module():
    readme = open(os.path.join(ROOT, "README.md")).read()
    layout = readme[readme.index("## Layout") : readme.index("\n## ", readme.index("## Layout") + 1)]
    names = {os.path.basename(path)[:-3] for path in MODULES.values() if not path.endswith("__init__.py")}
    assert sorted(name for name in names if name not in layout) == []
