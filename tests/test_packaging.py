"""A plain (non-editable) install carries everything a user runs: the default model's weights, the cost tables,
the cache store and the app, under the one top-level name `tmpdiff`."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return next(out.glob("tmpdiff-*.whl"))


def test_the_wheel_claims_one_top_level_name_and_carries_the_weights(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"tmpdiff"}
    for needed in ("tmpdiff/weights/shapes-dit/transformer/diffusion_pytorch_model.safetensors",
                   "tmpdiff/weights/shapes-dit/model_index.json", "tmpdiff/cache/store.py", "tmpdiff/ui/serve.py",
                   "tmpdiff/costs/flux-dev-h100.json"):
        assert needed in names, needed
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "tmpdiff = tmpdiff.cli:run" in entry_points and "tmpdiff-app = tmpdiff.ui.serve:main" in entry_points


def test_the_installed_package_runs_from_another_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "TMPDIFF_CACHE_DIR": str(tmp_path / "cache")}
    probe = (f"import tmpdiff; assert tmpdiff.__file__.startswith({str(target)!r}), tmpdiff.__file__; "
             "pipe = tmpdiff.load_pipeline('shapes-dit'); print(type(pipe).__name__)")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "DiTPipeline", loaded.stderr
    generated = subprocess.run([sys.executable, "-m", "tmpdiff", "generate", "--out", "x.png"], cwd=elsewhere,
                               env=env, capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr
    assert (elsewhere / "x.png").exists() and json.loads(generated.stdout.splitlines()[-1])["model"] == "shapes-dit"
    app = subprocess.run([sys.executable, "-c", "from tmpdiff.ui.serve import parse_args; print(parse_args([]).host)"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert app.stdout.strip() == "127.0.0.1", app.stderr
