"""physgen's rooms import one way, down the layers, without loops and without imports hidden inside functions.

    shared helpers (errors, io, seeds, stats, checkpoint, plan, devices)  <  envs, data  <  policies, world_models
    <  bench, control  <  cli
"""

import ast
from pathlib import Path

import physgen

ROOT = Path(physgen.__file__).parent
LAYERS = {"envs": 1, "data": 1, "policies": 2, "world_models": 2, "bench": 3, "control": 3, "cli": 4}
# imports that may stay inside a function: the reason each is deferred
DEFERRED = {
    ("physgen.control", "physgen.control.controller"): "load_exported serves with jax and numpy only",
    ("physgen.control.export", "physgen.policies"): "an exported file loads without the training code",
    ("physgen.control.export", "jax2onnx"): "the onnx extra: heavy and optional, needed only to export ONNX",
    ("physgen.bench.video", "mujoco"): "rendering only: MuJoCo's GL backend is chosen when it is first imported",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of a physgen module: its room's, 0 for the shared helpers at the package root."""
    room = module.split(".")[1] if module.count(".") else ""
    return LAYERS.get(room, 0)


FILES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports(path: Path):
    """(imported module, line, inside a function) for each import in the file; `from package import module` counts
    as importing that module."""
    tree = ast.parse(path.read_text())
    local = {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(function)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno, id(node) in local) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                module = f"{node.module}.{alias.name}"
                yield module if module in FILES else node.module, node.lineno, id(node) in local


def test_no_import_reaches_up_a_layer():
    upward = [f"{name}:{line} imports {target}" for name, path in FILES.items() for target, line, _ in imports(path)
              if target.startswith("physgen.") and layer(target) > layer(name)]
    assert not upward, "\n".join(upward)


def test_no_imports_hide_inside_functions_without_a_reason():
    hidden = [f"{name}:{line} imports {target}" for name, path in FILES.items()
              for target, line, inside in imports(path) if inside and (name, target) not in DEFERRED]
    assert not hidden, "\n".join(hidden)


def test_no_import_loops_between_files():
    graph = {name: {target for target, _, inside in imports(path) if target in FILES and not inside}
             for name, path in FILES.items()}
    state, loops = {}, []

    def visit(name, trail):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                loops.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not loops, "\n".join(loops)
