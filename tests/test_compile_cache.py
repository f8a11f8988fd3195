"""The persistent compile cache: keys, corrupt entries, warmup across processes, and AoT variants on the CPU."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

from tmpdiff import apply_schedule, get_model, load_pipeline
from tmpdiff.variants.compile_cache import CompileCache, CompileCacheWarning, CompileKey

LINEAR = torch.nn.Linear(8, 8)
ARGS = (torch.zeros(2, 8),)


def key(**changes) -> CompileKey:
    base = CompileKey.make("compiled", "bf16", LINEAR, ARGS, {}, torch.device("cpu"))
    return CompileKey(**{**base.__dict__, **changes})


def test_key_changes_with_precision_shape_device_and_versions():
    base = key()
    assert key().digest == base.digest
    shape = CompileKey.make("compiled", "bf16", LINEAR, (torch.zeros(4, 8),), {}, torch.device("cpu"))
    others = [key(precision="fp8"), key(mode="aot"), shape,
              key(device={"type": "cuda", "capability": "9.0", "name": "NVIDIA H100 80GB HBM3"}),
              key(versions={**base.versions, "torchao": "0.0.1"}), key(versions={**base.versions, "torch": "9.9"})]
    digests = {k.digest for k in others}
    assert base.digest not in digests and len(digests) == len(others)


def test_key_is_the_same_in_every_process():
    """diffusers configs hold a set-ordered private list; the key must not depend on hash seeds."""
    code = ("import torch; from tmpdiff import load_pipeline; from tmpdiff.variants.compile_cache import CompileKey; "
            "m = load_pipeline('tiny-flux').transformer; "
            "print(CompileKey.make('aot', 'fp32', m, (torch.zeros(1, 4),), {}, torch.device('cpu')).digest)")
    digests = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1


def test_corrupt_and_stale_entries_are_discarded_with_a_warning(tmp_path):
    cache = CompileCache(tmp_path)
    entry = key()
    cache._write(entry, {f"{entry.digest}.bin": b"artifacts"}, seconds=3.0)
    assert cache._read(entry, f"{entry.digest}.bin") == b"artifacts"
    assert cache.previous_seconds("compiled", "bf16", LINEAR) == 3.0
    (cache.root / f"{entry.digest}.bin").write_bytes(b"artifaXts")  # same size, one byte flipped
    with pytest.warns(CompileCacheWarning, match="checksum"):
        assert cache.load_artifacts(entry) is False
    assert not list(cache.root.glob(f"{entry.digest}.*"))  # removed, to be rebuilt
    cache._write(entry, {f"{entry.digest}.bin": b"not torch artifacts"}, seconds=3.0)
    with pytest.warns(CompileCacheWarning, match="could not load"):
        assert cache.load_artifacts(entry) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load_artifacts(entry) is False  # nothing left: a plain miss, no warning


def warmup(cache_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tmpdiff", "--device", "cpu", "warmup", "--model", "tiny-flux",
                           "--precisions", "fp32", "--cache-dir", str(cache_dir), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_a_child_process_uses_its_own_cache_folder_not_the_one_its_parent_chose(tmp_path, monkeypatch):
    for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TMPDIFF_INDUCTOR_CACHE_DIR"):
        monkeypatch.delenv(variable, raising=False)
    CompileCache(tmp_path / "parent").activate()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "parent" / "compiled" / "inductor")
    CompileCache(tmp_path / "child").activate()  # as in a subprocess, which inherits the environment
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "child" / "compiled" / "inductor")

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users"))  # the user's own choice stays
    CompileCache(tmp_path / "other").activate()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "users")


def test_warmup_fills_the_cache_and_a_second_process_only_loads(tmp_path):
    first = warmup(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    cold = json.loads(first.stdout.splitlines()[-1])["variants"][0]
    assert cold["from_cache"] is False and cold["inductor_compilations"] > 0
    assert "compiling fp32 for this model (first time only" in first.stderr
    [build] = cold["builds"]  # where its seconds went: mostly Inductor, inside Dynamo's backend call
    spans = {"weights", "load_cache", "dynamo_trace", "guards", "backend", "first_run", "save_cache"}
    assert spans <= set(build["phases"])
    assert max(build["phases"], key=build["phases"].get) == "backend"
    assert 0.8 * build["seconds"] < sum(build["phases"].values()) <= build["seconds"] + 0.01
    [artifacts] = (tmp_path / "compiled").glob("*.bin")

    second = warmup(tmp_path)
    warm = json.loads(second.stdout.splitlines()[-1])["variants"][0]
    assert warm["from_cache"] is True and warm["inductor_compilations"] == 0  # Inductor compiled nothing
    assert "save_cache" not in warm["builds"][0]["phases"]
    assert warm["builds"][0]["phases"]["backend"] < build["phases"]["backend"] / 2  # loaded, not compiled
    stored = CompileCache(tmp_path).entries()[0]["seconds"]  # what the first compilation cost
    assert f"first time only, ~{stored:.0f} s" in second.stderr

    artifacts.write_bytes(artifacts.read_bytes()[:-10])  # truncated: rebuilt, with a warning, not a crash
    third = warmup(tmp_path)
    assert third.returncode == 0 and "unusable" in third.stderr
    assert json.loads(third.stdout.splitlines()[-1])["variants"][0]["from_cache"] is False
    assert CompileCache(tmp_path).entries()  # a fresh entry replaced the corrupt one


@pytest.mark.parametrize(("extra", "needle"), [
    (("--precisions", "fp32,nope"), "'nope'"),
    (("--precisions", "skip"), "skip"),
    (("--precisions", "fp32,"), "--precisions"),
    (("--size", "30"), "size"),
])
def test_warmup_mistakes_are_one_line_errors(tmp_path, extra, needle):
    done = subprocess.run([sys.executable, "-m", "tmpdiff", "--device", "cpu", "warmup", "--model", "tiny-flux",
                           "--cache-dir", str(tmp_path), *extra], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and needle in done.stderr and "Traceback" not in done.stderr


def test_a_file_as_cache_dir_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = warmup(blocker)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and str(blocker) in done.stderr


@pytest.mark.slow
@pytest.mark.compiles
def test_aot_variants_match_eager_and_reload_without_torch_compile(tmp_path):
    from torch._dynamo.utils import counters

    spec = get_model("tiny-flux")
    schedule = "fp32,int8*3"

    def kwargs():  # a fresh seeded generator for every run
        return spec.call_kwargs("a photo of a red cat", steps=4, seed=0)
  # int8's weights are torchao tensor subclasses: the unwrapped export path
    pipe = load_pipeline("tiny-flux")
    with torch.no_grad(), apply_schedule(pipe, schedule, compile=False):
        eager = pipe(**kwargs(), output_type="np").images[0]
    graphs = counters["stats"]["unique_graphs"]
    cache = CompileCache(tmp_path)
    with torch.no_grad(), apply_schedule(pipe, schedule, compile="aot", cache=cache) as handle:
        ahead = pipe(**kwargs(), output_type="np").images[0]
    assert handle.steps_run == ["fp32", "int8", "int8", "int8"]
    assert [(b.precision, b.from_cache) for b in handle.builds] == [("fp32", False), ("int8", False)]
    assert np.abs(eager - ahead).mean() < 0.02
    assert len(list((tmp_path / "compiled").glob("*.pt2"))) == 4  # 2 precisions x 2 block classes

    fresh = load_pipeline("tiny-flux")  # a new denoiser: nothing resident, packages come from the cache
    with torch.no_grad(), apply_schedule(fresh, schedule, compile="aot", cache=cache) as handle:
        again = fresh(**kwargs(), output_type="np").images[0]
    assert all(b.from_cache for b in handle.builds)
    assert np.array_equal(ahead, again)
    assert counters["stats"]["unique_graphs"] == graphs  # torch.compile never ran


@pytest.mark.slow
@pytest.mark.compiles
def test_aot_falls_back_to_torch_compile_with_a_warning_for_a_model_without_repeated_blocks(tmp_path):
    from tmpdiff.variants.aot import AotWarning

    pipe = load_pipeline("tiny-pixart")  # PixArt declares no repeated blocks
    kwargs = get_model("tiny-pixart").call_kwargs("a photo of a red cat", steps=2, seed=0)
    with pytest.warns(AotWarning, match="no repeated blocks"), torch.no_grad(), \
            apply_schedule(pipe, "fp32*2", compile="aot", cache=CompileCache(tmp_path)) as handle:
        pipe(**kwargs, output_type="np")
    assert "torch.compile instead" in handle.builds[0].note


def test_a_machine_where_aot_packages_crash_on_loading_is_found_out_in_a_child_process(tmp_path, monkeypatch):
    from tmpdiff.variants import aot

    monkeypatch.setattr(aot, "_VERDICTS", {})
    monkeypatch.setattr(aot, "_LOAD_CHECK", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    works, why = aot.loading_works(torch.device("cpu"), tmp_path)
    assert not works and "crashed" in why and "signal 11" in why  # this process lives on

    monkeypatch.setattr(aot, "_VERDICTS", {})  # a new process: the verdict comes from the cache folder
    monkeypatch.setattr(aot, "_check_loading", lambda device: pytest.fail("checked again"))
    assert aot.loading_works(torch.device("cpu"), tmp_path) == (False, why)


@pytest.mark.slow
@pytest.mark.compiles
def test_aot_falls_back_to_torch_compile_where_packages_cannot_be_loaded(tmp_path, monkeypatch):
    from tmpdiff.variants import aot

    monkeypatch.setattr(aot, "loading_works", lambda device, folder: (False, "loading crashed (signal 11)"))
    pipe = load_pipeline("tiny-flux")
    kwargs = get_model("tiny-flux").call_kwargs("a photo of a red cat", steps=2, seed=0)
    with pytest.warns(aot.AotWarning, match="signal 11"), torch.no_grad(), \
            apply_schedule(pipe, "fp32*2", compile="aot", cache=CompileCache(tmp_path)) as handle:
        pipe(**kwargs, output_type="np")
    assert handle.compiled and "torch.compile instead" in handle.builds[0].note
    assert not list((tmp_path / "compiled").glob("*.pt2"))
