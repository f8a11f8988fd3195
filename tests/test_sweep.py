"""Sweeps: spec files expanded and checked up front, evaluations through the cache, resumable, CSV out."""

import csv
import json
import subprocess
import sys

import pytest

from tmpdiff.cache import Cache
from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.steps.replay import ReplayStore
from tmpdiff.studies.sweep import CSV_COLUMNS, load_spec, run_sweep

GRID = """
[[grid]]
models = ["shapes-dit"]
prompts = ["red circle", "blue square"]
seeds = [0, 1]
steps = 4
schedules = ["reference", "fp32*2,skip*2", "fp32,bf16*3"]
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_toml_grid_expands_to_every_combination(tmp_path):
    items = load_spec(write(tmp_path, "s.toml", GRID + '\n[[grid]]\nmodels = "shapes-dit"\nsteps = [4, 6]\n'
                                                       'schedules = "reference"\n'))
    assert len(items) == 2 * 2 * 3 + 2
    assert {str(i.schedule) for i in items} == {"fp32*4", "fp32*2,skip*2", "fp32,bf16*3", "fp32*6"}
    assert {(i.settings.prompt, i.settings.seed) for i in items[:12]} == {
        (p, s) for p in ("red circle", "blue square") for s in (0, 1)}
    assert items[-1].settings.prompt is None and items[-1].settings.resolved_steps == 6


def test_a_csv_spec_lists_evaluations_and_repeats_run_once(tmp_path):
    spec = write(tmp_path, "s.csv", "model,prompt,seed,steps,schedule\n"
                                    "shapes-dit,red circle,3,4,\"fp32*2,skip*2\"\n"
                                    "shapes-dit,red circle,3,4,\"fp32*2,skip*2\"\n"
                                    "shapes-dit,,0,4,reference\n")
    items = load_spec(spec)
    assert [(i.settings.seed, str(i.schedule)) for i in items] == [(3, "fp32*2,skip*2"), (0, "fp32*4")]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("s.toml", GRID.replace("seeds", "seed"), "s.toml: unknown key 'seed'"),
    ("s.toml", GRID.replace('"fp32*2,skip*2"', '"fp32*3"'), "schedule 'fp32*3' for shapes-dit at 4 steps"),
    ("s.toml", GRID.replace('"shapes-dit"', '"sd9"'), "unknown model 'sd9'"),
    ("s.toml", GRID.replace("seeds = [0, 1]", 'seeds = ["zero"]'), "seeds must hold whole-number values"),
    ("s.toml", "[[grid]]\nmodels = ['shapes-dit']\n", "missing 'schedules'"),
    ("s.toml", "models = [", "cannot read sweep spec"),
    ("s.csv", "model,prompt\nshapes-dit,x\n", "missing 'schedule'"),
    ("s.csv", "model,schedule\nshapes-dit,fp32*8\nshapes-dit,int9*8\n", "s.csv line 3: schedule 'int9*8'"),
    ("s.yaml", "models: []", "a .toml or .csv file"),
])
def test_spec_mistakes_name_the_place(tmp_path, name, text, message):
    with pytest.raises(ValueError) as error:
        load_spec(write(tmp_path, name, text))
    assert message in str(error.value)


def test_a_sweep_goes_through_the_cache_and_resumes(tmp_path):
    items = load_spec(write(tmp_path, "s.toml", GRID))
    db = tmp_path / "c.sqlite"
    evaluator = Evaluator(Engine("cpu"), Cache(db))
    evaluator.replay = ReplayStore()
    first = run_sweep(evaluator, items[:7])  # stopped part-way
    assert not any(row["cached"] for row in first)
    again = Evaluator(Engine("cpu"), Cache(db))
    rows = run_sweep(again, items)
    assert [row["cached"] for row in rows] == [True] * 7 + [False] * 5  # only the rest computed
    assert [(r["prompt"], r["seed"], r["schedule"]) for r in rows] == [
        (i.settings.prompt, i.settings.seed, str(i.schedule)) for i in items]  # the spec's order
    assert {r["ssim"] for r in rows if r["schedule"] == "fp32*4"} == {1.0}
    assert set(rows[0]) == set(CSV_COLUMNS)
    # replayed prefixes give the very image a run of its own gives
    stored = Cache(db).get(again.key(items[4].settings, items[4].schedule))
    alone = Evaluator(Engine("cpu")).evaluate(items[4].settings, items[4].schedule)
    assert stored.png == alone.record.png


def test_cli_sweep_writes_a_csv_and_a_second_run_computes_nothing(tmp_path):
    spec = write(tmp_path, "s.csv", "model,prompt,seed,steps,schedule\nshapes-dit,red circle,0,4,reference\n"
                                    "shapes-dit,red circle,0,4,\"fp32*2,skip*2\"\n")
    command = [sys.executable, "-m", "tmpdiff", "sweep", str(spec), "--csv", str(tmp_path / "out.csv"),
               "--db", str(tmp_path / "c.sqlite")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.splitlines()[-1])
    assert summary["evaluations"] == 2 and summary["from_cache"] == 0 and summary["denoiser_calls"] > 0
    with (tmp_path / "out.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [r["schedule"] for r in rows] == ["fp32*4", "fp32*2,skip*2"]
    assert float(rows[1]["ssim"]) < 1.0 and float(rows[1]["seconds"]) > 0
    second = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=300).stdout.splitlines()[-1])
    assert second["from_cache"] == 2 and second["denoiser_calls"] == 0


def test_cli_sweep_mistakes_print_one_line(tmp_path):
    spec = write(tmp_path, "s.toml", GRID.replace("steps = 4", "steps = 0"))
    result = subprocess.run([sys.executable, "-m", "tmpdiff", "sweep", str(spec), "--csv", str(tmp_path / "o.csv")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: s.toml: steps must be from 1 to 1000, got 0"
    assert not (tmp_path / "o.csv").exists()


def test_settings_of_a_sweep_row_match_the_stock_run_settings(tmp_path):
    items = load_spec(write(tmp_path, "s.toml", GRID))
    assert items[0].settings == RunSettings(model="shapes-dit", prompt="red circle", seed=0, steps=4)


def test_prompts_file_is_read_beside_the_spec_and_never_echoed(tmp_path):
    from tmpdiff.studies.sweep import load_spec

    secret = tmp_path / "secret.txt"
    secret.write_text("the first line of a private file\n")
    folder = tmp_path / "study"
    folder.mkdir()
    spec = folder / "s.toml"
    for name, message in (("../secret.txt", "must name a file beside the spec"),
                          (str(secret), "must name a file beside the spec"),
                          ("missing.txt", "cannot read prompts_file 'missing.txt'")):
        spec.write_text(f'[[grid]]\nmodels = ["shapes-dit"]\nprompts_file = "{name}"\nschedules = ["reference"]\n')
        with pytest.raises(ValueError, match=message) as info:
            load_spec(spec)
        assert "private file" not in str(info.value)
    (folder / "prompts.txt").write_text("red circle\nthe first line of a private file\n")
    spec.write_text('[[grid]]\nmodels = ["shapes-dit"]\nprompts_file = "prompts.txt"\nschedules = ["reference"]\n')
    with pytest.raises(ValueError, match="prompt 2 of prompts_file is not a prompt shapes-dit takes") as info:
        load_spec(spec)
    assert "private file" not in str(info.value)
