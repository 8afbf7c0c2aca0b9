"""Imports go down the floors only, without cycles, and MindSpore stays inside trainer/ (read with ast).

Floors, lowest first (README "How it fits together"):

    cluster/contracts/   imports nothing else of the project
    cluster/, monitoring/   each imports the contracts and itself, never the other
    orchestrator/        may import everything below it
    trainer/             imports the floors below the orchestrator; it is started as a process, so
                         nothing imports it (except the tests)
"""
import ast
import functools
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "cluster", "monitoring", "trainer")
CONTRACTS = "cluster.contracts"

#: floor -> the floors it may import (its own included)
ALLOWED = {
    "contracts": {"contracts"},
    "cluster": {"contracts", "cluster"},
    "monitoring": {"contracts", "monitoring"},
    "orchestrator": {"contracts", "cluster", "monitoring", "orchestrator"},
    "trainer": {"contracts", "cluster", "monitoring", "trainer"},
}


def floor(module: str) -> Optional[str]:
    if module == CONTRACTS or module.startswith(CONTRACTS + "."):
        return "contracts"
    top = module.split(".")[0]
    return top if top in PACKAGES else None


def modules() -> Dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.AST) -> Set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks: type-only imports, never executed."""
    lines: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(name: str, path: Path, known: Dict[str, Path]) -> Iterator[Tuple[str, int, bool]]:
    """(imported module, line, type-only) for every import statement of one module (any depth)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    type_only = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, node.lineno in type_only
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"      # `from cluster import hccn` imports the module cluster.hccn
                yield (sub if sub in known else mod), node.lineno, node.lineno in type_only


@functools.lru_cache(maxsize=1)
def graph() -> Tuple[Dict[str, Path], List[Tuple[str, str, int, bool]]]:
    known = modules()
    edges = [(name, target, line, type_only) for name, path in known.items()
             for target, line, type_only in imports(name, path, known)]
    return known, edges


def where(known: Dict[str, Path], name: str, line: int) -> str:
    return f"{known[name].relative_to(ROOT)}:{line}"


def test_imports_go_down_the_floors_only():
    known, edges = graph()
    wrong = []
    for src, dst, line, _ in edges:
        a, b = floor(src), floor(dst)
        if b is not None and b not in ALLOWED[a]:
            wrong.append(f"{where(known, src, line)}: {src} ({a}) imports {dst} ({b})")
    assert not wrong, "imports against the floors:\n" + "\n".join(wrong)


def test_mindspore_is_imported_inside_trainer_only():
    known, edges = graph()
    wrong = [f"{where(known, src, line)}: imports {dst}" for src, dst, line, _ in edges
             if dst.split(".")[0] == "mindspore" and floor(src) != "trainer"]
    assert not wrong, "MindSpore outside trainer/ (the launcher and `--help` must not load it):\n" + "\n".join(wrong)


def test_no_module_import_cycles():
    known, edges = graph()
    succ: Dict[str, Set[str]] = {m: set() for m in known}
    for src, dst, _, type_only in edges:
        if dst in known and dst != src and not type_only:
            succ[src].add(dst)
    # Tarjan's strongly connected components: every component larger than one module is a cycle
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
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
                cycles.append(sorted(comp))

    for v in sorted(known):
        if v not in index:
            visit(v)
    assert not cycles, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_what_they_must():
    """The walk finds relative imports, `from pkg import module` and imports inside functions."""
    known, edges = graph()
    got = {(s, d) for s, d, _, _ in edges}
    assert ("trainer.data.loader", "trainer.data.lists") in got                  # from .lists import
    assert ("orchestrator.cli", "cluster.accelerators") in got                   # inside a function
    assert floor("cluster.contracts.env") == "contracts" and floor("cluster.hosts") == "cluster"
    assert floor("numpy") is None
