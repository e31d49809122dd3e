"""The package's one dependency direction: cli -> api -> steps -> core, and no import circles.

Every import statement counts, also those inside functions (a lazy import is still a dependency).
"""

import ast
from pathlib import Path

import spikernel

ROOT = Path(spikernel.__file__).parent

# Lower ranks are imported by higher ones, never the other way; equal ranks of different packages
# do not import each other. The steps follow the method: cells, networks and data, scores, training,
# search, deployment, selection. The core modules (rank 0) may use each other.
RANKS = {"errors": 0, "files": 0, "heap": 0, "events": 0, "threads": 0, "": 0, "space": 1, "nn": 2, "data": 2, "proxy": 3,
         "training": 4, "nas": 5, "deploy": 6, "selection": 7, "api": 8, "cli": 9, "__main__": 10}
TERMINAL = ("click", "rich")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def imports(path: Path) -> set[str]:
    """Absolute names of everything a module imports (relative imports resolved)."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["spikernel", *package[: len(package) - node.level + 1]]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            names.add(stem)
            names.update(f"{stem}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = {n.removeprefix("spikernel.") for n in imports(path) if n.startswith("spikernel.")}
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


def rank(module: str) -> int:
    return RANKS[module.split(".")[0] if module else ""]


def test_layers_only_import_downwards():
    edges = graph()
    edges[""] = set()  # the package root re-exports the API (lazily): it sits above every layer
    reverse = [f"{a} -> {b}" for a, targets in edges.items() for b in targets
               if a.split(".")[0] != b.split(".")[0] and rank(a) <= rank(b) and b != "" and rank(a) + rank(b) > 0]
    assert not reverse, reverse


def test_only_the_cli_knows_the_terminal():
    offenders = []
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        if name.split(".")[0] in ("cli", "__main__"):
            continue
        for imported in imports(path):
            if imported.split(".")[0] in TERMINAL or imported.startswith("spikernel.cli"):
                offenders.append(f"{name} imports {imported}")
    assert not offenders, offenders


def test_no_import_circles():
    edges = graph()
    edges[""] = set()  # the package root's only import is the API, lazily, on attribute access
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_import_is_cheap_and_has_no_side_effects():
    import subprocess
    import sys

    code = ("import logging, sys, spikernel; "
            "print('torch' in sys.modules, 'optuna' in sys.modules, "
            "logging.getLogger('torch._library.triton').level)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "0"]


def test_light_names_match_the_registries():
    from spikernel.data import DATASET_NAMES
    from spikernel.data.datasets import DATASETS

    assert tuple(DATASETS) == DATASET_NAMES


def test_cli_names_match_the_library():
    from spikernel.cli.export import TARGETS
    from spikernel.cli.options import RECIPE_NAMES
    from spikernel.deploy.nir import TARGETS as NIR_TARGETS
    from spikernel.training.recipe import RECIPES

    assert TARGETS == tuple(NIR_TARGETS) and set(RECIPE_NAMES) == set(RECIPES)
    from spikernel.proxy import PROXY_NAMES
    from spikernel.proxy.zero_cost import PROXIES

    assert PROXY_NAMES == tuple(PROXIES)


def test_the_command_line_starts_without_pytorch():
    import subprocess
    import sys

    code = "import sys, spikernel.cli; print(sorted(m for m in ('torch', 'optuna', 'matplotlib') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
