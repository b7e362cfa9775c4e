"""The layout holds: imports run one way (errors -> attentions, metrics -> config -> store ->
harness.run -> harness.sweep -> harness.report -> main), no import circles, and no `_private`
name of one module imported or used by another. Read from the code with ast, nothing imported."""
import ast
from pathlib import Path


from conftest import ROOT

PACKAGES = ("attentions", "metrics", "harness", "benchmarks")
# The floor each module stands on; a module may import only from its own floor or lower ones.
FLOORS = [("harness.errors", 0), ("attentions.order", 0), ("attentions", 1), ("metrics", 1), ("config", 2),
          ("harness.store", 3), ("harness.run", 4), ("harness.sweep", 5), ("harness.report", 6),
          ("harness", 0), ("main", 7), ("benchmarks", 8)]  # "harness" alone: its empty __init__


def modules() -> dict[str, Path]:
    found = {"config": ROOT / "config.py", "main": ROOT / "main.py"}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def floor(module: str) -> int:
    return next(f for prefix, f in FLOORS if module == prefix or module.startswith(prefix + "."))


def resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, the name taken from it or None) for every import in the module."""
    out = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            out += [(t, None) for a in node.names if (t := resolve(a.name))]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in MODULES:
                    out.append((full, None))
                elif t := resolve(node.module):
                    out.append((t, a.name))
    return [(t, name) for t, name in out if t != module]


def test_every_module_has_a_floor():
    assert {m for m in MODULES if not any(m == p or m.startswith(p + ".") for p, _ in FLOORS)} == set()


def test_imports_run_one_way():
    upward = [f"{m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
              for m in MODULES for t, _ in imports(m) if floor(t) > floor(m)]
    assert upward == []


def test_no_import_circles():
    graph = {m: {t for t, _ in imports(m)} for m in MODULES}
    seen, circles = {}, []

    def visit(m, path):
        seen[m] = "open"
        for t in graph[m]:
            if seen.get(t) == "open":
                circles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in seen:
                visit(t, path + [t])
        seen[m] = "done"

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])
    assert circles == []


def test_no_private_name_crosses_a_module():
    crossings = [f"{m} imports {name} from {t}" for m in MODULES for t, name in imports(m)
                 if name and name.startswith("_") and not name.startswith("__")]
    for m, path in MODULES.items():  # module._name through an imported module
        aliases = {(a.asname or a.name): t for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names
                   if (t := resolve(f"{node.module}.{a.name}" if isinstance(node, ast.ImportFrom) and node.module
                                    else a.name)) and t != m}
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                crossings.append(f"{m} uses {node.value.id}.{node.attr}")
    assert crossings == []


def test_nothing_replaces_a_module_attribute_at_run_time():
    """`module.name = value` on an imported project module, outside tests."""
    bad = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        names = {(a.asname or a.name).split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names
                 if resolve(f"{node.module}.{a.name}" if isinstance(node, ast.ImportFrom) and node.module else a.name)}
        bad += [f"{m}: {ast.unparse(t)}" for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                and t.value.id in names]
    assert bad == []


def test_the_top_level_is_the_house_plan():
    allowed = {"for_colab.ipynb", "config.py", "main.py", "requirements.txt", "requirements-test.txt", "README.md",
               "pytest.ini", "attentions", "metrics", "harness", "results", "assets", "benchmarks", "tests"}
    top = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} - {"__pycache__", "venv"}
    assert top <= allowed, sorted(top - allowed)
    assert {"for_colab.ipynb", "config.py", "main.py", "requirements.txt", "README.md"} <= top
