"""The engine stays free of UI and database code, and importing it touches no GPU."""

import subprocess
import sys

CHECK = """
import sys, torch
import tmpdiff, tmpdiff.engine.runner, tmpdiff.measure.metrics, tmpdiff.steps.switch
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
