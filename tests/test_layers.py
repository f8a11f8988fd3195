"""The engine stays free of UI and database code, and importing it touches no GPU."""

import ast
import re
import subprocess
import sys
from pathlib import Path

CHECK = """
import sys, torch
import tmpdiff, tmpdiff.engine.runner, tmpdiff.measure.metrics, tmpdiff.switching.switch
bad = [m for m in ("gradio", "sqlalchemy") if m in sys.modules]
assert not bad, bad
assert not torch.cuda.is_initialized()
print("clean")
"""


def test_engine_imports_no_gradio_no_sqlalchemy_and_no_cuda():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.stdout.strip() == "clean", result.stderr


HEAVY = ("torch", "diffusers", "torchao", "transformers", "peft", "gradio", "sqlalchemy", "ray")


def loaded_by(code: str) -> set[str]:
    """The heavy libraries a fresh interpreter has imported after ``code``."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return set(eval(result.stdout.strip().splitlines()[-1]))  # a list literal the probe printed


def test_importing_tmpdiff_loads_no_heavy_library():
    assert loaded_by("import tmpdiff") == set()
    assert loaded_by("import tmpdiff; tmpdiff.Schedule.parse('fp32*2')") == set()  # dtypes are named, not held
    assert {"diffusers"} <= loaded_by("import tmpdiff; tmpdiff.apply_schedule")  # loaded when first used


def test_cli_help_and_argument_mistakes_load_no_heavy_library_not_even_torch():
    for argv in (["--help"], ["generate", "--help"], ["sweep", "--help"], ["generate"], ["search", "--steps", "x"]):
        code = f"import tmpdiff.cli.entry\ntry:\n    tmpdiff.cli.entry.main({argv!r})\nexcept SystemExit:\n    pass"
        assert loaded_by(code) == set(), argv


def test_listing_the_models_loads_no_heavy_library():
    assert loaded_by("import tmpdiff.cli.entry\nassert tmpdiff.cli.entry.main(['models']) == 0") == set()


def test_moving_evaluations_between_machines_loads_sql_and_no_torch(tmp_path):
    """``tmpdiff cache export`` and ``import`` (the store, schedules, PNG checks) take no torch and no pipeline:
    on a GPU machine importing torch alone took 6 s."""
    from cache_records import record

    from tmpdiff.cache import Cache

    Cache(tmp_path / "a.sqlite").put(record())
    exported, db = tmp_path / "moved.json", tmp_path / "b.sqlite"
    for argv in (["cache", "export", str(exported), "--db", str(tmp_path / "a.sqlite")],
                 ["cache", "import", str(exported), "--db", str(db)]):
        code = f"import tmpdiff.cli.entry\nassert tmpdiff.cli.entry.main({argv!r}) == 0"
        assert loaded_by(code) == {"sqlalchemy"}, argv
    assert Cache(db).get(record().key) is not None


ROOT = Path(__file__).resolve().parent.parent
SHARED = {"tmpdiff.errors", "tmpdiff.limits", "tmpdiff.atomic"}


def layers_from_readme() -> list[tuple[str, Path, str]]:
    """The README's layout table, lowest layer first: (package, folder, what the row says is in it)."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `((?:tmpdiff/)?\w+)/` \| [^|]+ \| (.+) \|$", text, flags=re.MULTILINE)
    return [("tmpdiff." + folder.removeprefix("tmpdiff/"), ROOT / folder, what) for folder, what in rows]


def imports_of(path: Path, package: str) -> list[tuple[int, str]]:
    """Every ``tmpdiff`` module a file imports (relative imports resolved), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            names = [module] if module.startswith("tmpdiff") else []
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("tmpdiff")]
        else:
            continue
        found += [(node.lineno, name) for name in names]
    return found


def test_no_module_imports_from_a_layer_below_its_own_and_the_layout_names_every_module():
    layers = layers_from_readme()
    order = [package for package, _, _ in layers]
    assert order[:3] == ["tmpdiff.steps", "tmpdiff.variants", "tmpdiff.switching"] and order[-1] == "tmpdiff.ui"
    upward, unnamed = [], []
    for rank, (package, folder, what) in enumerate(layers):
        for path in sorted(folder.glob("*.py")):
            if path.name != "__init__.py" and f"`{path.name}`" not in what:
                unnamed.append(f"{folder.name}/{path.name}")
            for line, module in imports_of(path, package):
                target = next((p for p in order if module == p or module.startswith(p + ".")), None)
                if target is None:
                    assert module in SHARED or module == "tmpdiff", f"{path}:{line} imports {module}"
                elif order.index(target) > rank:
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({target} is below)")
    assert upward == [], "\n".join(upward)
    assert unnamed == [], f"modules the README's layout table does not name: {unnamed}"
    for package, folder, _ in layers:
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        assert doc.startswith(f"Layer {order.index(package) + 1}, "), f"{folder}/__init__.py names no layer"


def test_the_shared_modules_import_no_layer():
    for name in SHARED:
        path = ROOT / (name.replace(".", "/") + ".py")
        assert {m for _, m in imports_of(path, "tmpdiff")} <= SHARED, path


def module_files() -> dict[str, Path]:
    """Every module of the package, by its installed name (``cache/`` and ``ui/`` as ``tmpdiff.cache``/``.ui``)."""
    found = {}
    for package, folder, _ in layers_from_readme():
        for path in folder.glob("*.py"):
            found[package if path.name == "__init__.py" else f"{package}.{path.stem}"] = path
    return found


def runtime_imports(path: Path, package: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules a file imports when it runs (lazily too; not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in checking or not isinstance(node, ast.ImportFrom | ast.Import):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            root = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{root}.{base}" if base else root
        found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {m for m in found if m in modules}


def test_no_module_imports_itself_through_others():
    modules = module_files()
    graph = {name: runtime_imports(path, name if path.name == "__init__.py" else name.rsplit(".", 1)[0], modules)
             for name, path in modules.items()}
    assert "tmpdiff.cli.study_commands" in graph["tmpdiff.cli.entry"]  # lazy imports count
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name] - {name}):
            if state.get(other) == 1:
                circles.append(trail[trail.index(other):] + [name, other] if other in trail else [name, other])
            elif other not in state:
                visit(other, [*trail, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert circles == [], circles
