"""The package layout: imports only go down the pipeline's stages, and no module imports itself
back through others (no circles).

Stages, bottom to top: common (config, cache, console, progress; ``transfer/__init__.py``),
backbones, data, evaluate, train, grid, report, and the command-line tools at the top of
``transfer/``. Every import counts, at module level or inside a function (a lazy import is
still a dependency), except the public facade ``transfer.__getattr__``, which a user calls
after everything is importable. Read with ``ast``: nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Bottom to top; a module may import its own stage and the stages below it.
STAGES = ["common", "backbones", "data", "evaluate", "train", "grid", "report", "cli"]
PACKAGES = {"transfer.common": "common", "backbones": "backbones", "transfer.data": "data",
            "transfer.evaluate": "evaluate", "transfer.train": "train", "transfer.grid": "grid",
            "transfer.report": "report"}
#: The command-line tools (``python -m transfer.X``): thin, at the top, may import anything.
CLIS = {"transfer.run", "transfer.prepare", "transfer.predict", "transfer.inspect",
        "transfer.bench", "transfer.checks", "transfer.ssl"}
FACADE = ("transfer", "__getattr__")  # (module, function) whose lazy imports are the public API


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage_of(module: str) -> str | None:
    """The stage of a module, or None when it sits outside every stage."""
    if module == "transfer":
        return "common"
    best = max((p for p in PACKAGES if module == p or module.startswith(p + ".")), key=len,
               default=None)
    if best is not None:
        return PACKAGES[best]
    return "cli" if module in CLIS else None


def _imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(imported name, line) of every import in a module, the facade's lazy ones and the
    type-only ones (``if TYPE_CHECKING:``, no runtime dependency) left out; ``from M import n``
    gives ``M:n``."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef) and (module, child.name) == FACADE:
                continue
            if (isinstance(child, ast.If) and isinstance(child.test, ast.Name)
                    and child.test.id == "TYPE_CHECKING"):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")[: len(module.split(".")) - child.level
                                               + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                found.extend((f"{base}:{a.name}", child.lineno) for a in child.names)
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """Modules of ``transfer`` and ``backbones`` under ``root`` (name -> file) and the project
    modules each one imports (name -> {imported module: line})."""
    files = {module_name(p, root): p for top in ("transfer", "backbones")
             for p in sorted((root / top).rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: dict[str, int] = {}
        for target, line in _imports(tree, name, path.name == "__init__.py"):
            base, _, attr = target.partition(":")  # ``from M import f``: M; ``from P import m``: P.m
            target = f"{base}.{attr}" if f"{base}.{attr}" in files else base
            if target in files and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return files, graph


def upward_imports(root: Path) -> list[str]:
    files, graph = import_graph(root)
    problems = []
    for name, edges in graph.items():
        stage = stage_of(name)
        where = files[name].relative_to(root)
        if stage is None:
            problems.append(f"{where}: in no stage; move it into a stage's subpackage "
                            "(or, for a command-line tool, list it in CLIS)")
            continue
        for target, line in edges.items():
            to = stage_of(target)
            if to is not None and STAGES.index(to) > STAGES.index(stage):
                problems.append(f"{where}:{line}: {stage} imports {target} ({to}), a higher stage")
    return problems


def cycles(root: Path) -> list[list[str]]:
    """The import circles (strongly connected components of more than one module)."""
    _, graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return found


def test_imports_only_go_down_the_stages():
    problems = upward_imports(ROOT)
    assert not problems, "\n".join(problems)


def test_no_import_circles():
    found = cycles(ROOT)
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_documented_command_is_a_module():
    """``python -m transfer.X`` in the README names a module (or a package with __main__)."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in set(re.findall(r"python -m (transfer(?:\.\w+)+)", readme)):
        rel = Path(*name.split("."))
        assert (ROOT / rel.with_suffix(".py")).is_file() or \
            (ROOT / rel / "__main__.py").is_file(), name


def test_the_checks_find_an_upward_import_and_a_circle(tmp_path):
    """The checker itself: a data module importing train, and two modules importing each other."""
    def write(rel: str, text: str = "") -> None:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    write("transfer/__init__.py", "def __getattr__(name):\n    from transfer.run import main\n")
    write("transfer/run.py", "from transfer.data import loader\n")
    write("backbones/__init__.py")
    write("transfer/data/__init__.py")
    write("transfer/data/loader.py", "from transfer import UserError\n"
                                     "def f():\n    from transfer.train.engine import fit\n")
    write("transfer/train/__init__.py")
    write("transfer/train/engine.py", "from . import pretrain\n")
    write("transfer/train/pretrain.py", "import transfer.train.engine\n")
    up = upward_imports(tmp_path)
    assert up == ["transfer/data/loader.py:3: data imports transfer.train.engine (train), "
                  "a higher stage"], up
    assert cycles(tmp_path) == [["transfer.train.engine", "transfer.train.pretrain"]]
    write("transfer/stray.py")
    assert any("transfer/stray.py: in no stage" in p for p in upward_imports(tmp_path))
