"""Limits, in one place: hostile or mistaken sizes are refused where they enter, with one line that says why."""

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tmpdiff.engine.settings import RunSettings
from tmpdiff.limits import MAX_SEED, MAX_STEPS
from tmpdiff.steps.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent


def test_a_huge_repeat_count_is_refused_while_parsing():
    start = time.perf_counter()
    for text in ("fp32*100000000", "fp32*1000000000000", f"fp32*{MAX_STEPS},skip"):
        with pytest.raises(ValueError, match=f"past {MAX_STEPS} steps"):
            Schedule.parse(text)
    assert time.perf_counter() - start < 1  # nothing was expanded
    assert len(Schedule.parse(f"fp32*{MAX_STEPS - 1},skip")) == MAX_STEPS
    with pytest.raises(ValueError, match=f"steps must be from 1 to {MAX_STEPS}"):
        Schedule.uniform("fp32", MAX_STEPS + 1)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("guidance", math.nan, "guidance must be a finite number"),
    ("guidance", math.inf, "guidance must be a finite number"),
    ("guidance", 1e9, "guidance must be from 0 to 100"),
    ("seed", 2**64, f"seed must be from 0 to {MAX_SEED}"),
    ("seed", 1.5, "seed must be a whole number"),
    ("size", 10**6, "size must be from 8 to 4096 pixels"),
    ("steps", 10_000, f"steps must be from 1 to {MAX_STEPS}"),
    ("prompt", "x" * 5000, r"prompt has 5000 characters, at most 2000: 'xxx.*\.\.\. \(5002 characters\)$"),
])
def test_settings_refuse_values_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        RunSettings(model="shapes-dit", **{field: value})


@pytest.mark.parametrize(("args", "message"), [
    (["--guidance", "nan"], "guidance must be a finite number"),
    (["--guidance", "inf"], "guidance must be a finite number"),
    (["--seed", str(2**64)], "seed must be from 0 to"),
    (["--steps", "10000"], f"--steps must be from 1 to {MAX_STEPS}"),
    (["--schedule", "fp32*1000000000000"], f"past {MAX_STEPS} steps"),
])
def test_the_cli_refuses_them_in_one_line_before_any_work(tmp_path, args, message):
    db = tmp_path / "c.sqlite"
    result = subprocess.run([sys.executable, "-m", "tmpdiff", "generate", *args, "--out", str(tmp_path / "x.png"),
                             "--db", str(db)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "x.png").exists()


def test_seed_lists_are_bounded():
    from tmpdiff.studies.request import parse_seeds

    with pytest.raises(ValueError, match="numbers from 0 to"):
        parse_seeds(str(2**64))
    with pytest.raises(ValueError, match="at most 1000 seeds"):
        parse_seeds(",".join(map(str, range(1001))))
