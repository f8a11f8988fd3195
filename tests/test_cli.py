import json
import subprocess
import sys

import pytest
from PIL import Image


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tmpdiff", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_generate_with_no_flags_uses_the_default_model(tmp_path):
    out = tmp_path / "x.png"
    result = cli("generate", "--out", str(out))
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["model"] == "shapes-dit"
    assert line["steps_run"] == ["fp32"] * 8 and line["schedule"] == "fp32*8"
    assert line["device"] and line["seconds"] > 0
    assert Image.open(out).size == (64, 64)


def test_generate_mixed_schedule_reports_steps_run(tmp_path):
    out = tmp_path / "y.png"
    result = cli("generate", "--model", "tiny-sd15", "--steps", "4", "--schedule", "fp32*2,int8wo,skip",
                 "--prompt", "a red cat", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["steps_run"] == ["fp32", "fp32", "int8wo", "skip"]
    assert out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--schedule", "fp32*7,int9"], "unknown precision 'int9'"),
        (["--schedule", "fp32*3"], "has 3 steps but 8 were asked for"),
        (["--schedule", "fp32*4,,fp32*4"], "malformed schedule token ''"),
        (["--schedule", "skip,fp32*7"], "'skip' cannot be the first step"),
        (["--schedule", "nvfp4*8"], "precision 'nvfp4' is unavailable"),
        (["--steps", "0"], "steps must be a positive number, got 0"),
        (["--prompt", "purple hexagon"], "not 'purple hexagon'"),
        (["--model", "sd9"], "unknown model 'sd9'"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, args, message):
    result = cli("generate", *args, "--out", str(tmp_path / "z.png"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "z.png").exists()


def test_precisions_lists_the_registry():
    result = cli("precisions")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names[:3] == ["fp32", "bf16", "fp16"] and "skip" in names
