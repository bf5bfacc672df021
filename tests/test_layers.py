"""The import graph reads main/cli → api → launcher → pipeline → transforms → core, and never back up."""
import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = {"imgsim.cli", "imgsim.api", "imgsim.__main__"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("pipelines", "transforms"):
        parts = ["imgsim"] + parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("imgsim")}


@functools.lru_cache(maxsize=1)
def modules() -> dict[str, set[str]]:
    files = [p for d in ("imgsim", "pipelines", "transforms") for p in (ROOT / d).rglob("*.py")]
    return {module_name(p): imports_of(p) for p in files}


def layer(name: str) -> int:
    if name in TOP:
        return 4
    if name.startswith("imgsim.pipelines"):
        return 3
    if name.startswith("imgsim.transforms"):
        return 2
    return 1  # the core


def test_imports_only_go_down():
    wrong = []
    known = sorted(modules(), key=len, reverse=True)
    for module, imports in modules().items():
        for imported in imports:
            target = next((m for m in known if imported == m or imported.startswith(m + ".")), None)
            if target and target != "imgsim" and layer(target) > layer(module):
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_the_core_and_transforms_never_import_the_cli_or_the_configuration():
    """Transforms and the core packages get typed values passed down; only the top parses flags."""
    for module, imports in modules().items():
        if layer(module) <= 3:
            assert not any(i.startswith(("imgsim.cli", "imgsim.api")) for i in imports), module
        if layer(module) <= 2 and not module.startswith("imgsim.config"):
            assert not any(i.startswith("imgsim.config") for i in imports), module


def test_no_module_imports_itself_through_others():
    """No import circles, imports inside functions included: a circle hidden in a function is still
    two modules that cannot be understood (or split) apart."""
    known = sorted(modules(), key=len, reverse=True)
    graph = {}
    for module, imports in modules().items():
        targets = (next((m for m in known if i == m or i.startswith(m + ".")), None) for i in imports)
        graph[module] = {t for t in targets if t and t not in (module, "imgsim")}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    circles = sorted(f"{a} -> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert not circles, circles
