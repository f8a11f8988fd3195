"""One image over two processes (diffusers' context parallelism, Gloo on the CPU): per-step schedules give the
one-process image, and every variant is split like the reference."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

SCHEDULES = ["fp32*4", "fp32,bf16*2,fp32", "fp32,int8*2,skip", "fp32,fp8a8*2,extrap"]


def _images(pipe, schedules=SCHEDULES):
    from tmpdiff import Schedule, apply_schedule, get_model

    images = []
    for text in schedules:
        kwargs = get_model("tiny-flux").call_kwargs("a photo of a red cat", steps=4, seed=0)
        with apply_schedule(pipe, text) as handle, torch.no_grad():
            images.append(pipe(**kwargs, output_type="np").images[0])
        assert handle.steps_run == list(Schedule.parse(text).steps)
    return np.stack(images)


def _worker(rank: int, world: int, port: int, out: str, device: str = "cpu", schedules=SCHEDULES) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if device == "cpu":  # diffusers places the model on the process's accelerator; a CPU run has none to count
        torch.accelerator.device_count = lambda: 1
        torch._C._get_accelerator = lambda: torch.device("cpu")
    import torch.distributed as dist

    from tmpdiff import load_pipeline, parallel

    assert parallel.init_process_group() == (rank, world)
    pipe = load_pipeline("tiny-flux", device)
    if device == "cuda":
        pipe = pipe.to(torch.bfloat16)
    parallel.enable_context_parallel(pipe, world)
    images = _images(pipe, schedules)
    if rank == 0:
        np.save(out, images)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_one_process_images_for_every_schedule(pipes, tmp_path):
    out = str(tmp_path / "split.npy")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    split, single = np.load(out), _images(pipes("tiny-flux"))
    for text, a, b in zip(SCHEDULES, split, single, strict=True):
        assert np.abs(a - b).max() < 2e-3, text  # int8's per-token scales see the same tokens: only rounding


GPU_SCHEDULES = ["bf16*4", "bf16,fp8*2,bf16", "bf16,fp8a8*2,extrap"]


@pytest.mark.gpu
def test_two_gpus_give_the_one_gpu_images(tmp_path):
    from tmpdiff import Status, load_pipeline, precision_status

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    fp8_attention = precision_status("fp8a8", "cuda").status is Status.REAL
    schedules = [s for s in GPU_SCHEDULES if fp8_attention or "fp8a8" not in s]
    out = str(tmp_path / "split.npy")
    mp.start_processes(_worker, args=(2, _free_port(), out, "cuda", schedules), nprocs=2, join=True,
                       start_method="spawn")
    single = _images(load_pipeline("tiny-flux", "cuda").to(torch.bfloat16), schedules)
    for text, a, b in zip(schedules, np.load(out), single, strict=True):
        assert np.abs(a - b).mean() < 0.01, text  # bf16 sums in another order on two GPUs: a small difference


def test_context_parallel_needs_a_launcher_and_a_head_count_it_divides(pipes, monkeypatch):
    from tmpdiff import parallel

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc-per-node"):
        parallel.init_process_group()
    with pytest.raises(ValueError, match="2 attention heads, which 3 processes cannot share"):
        parallel.enable_context_parallel(pipes("tiny-flux"), 3)


SITE_PATCH = """import torch
torch.accelerator.device_count = lambda: 1  # diffusers places the model on the process's accelerator
torch._C._get_accelerator = lambda: torch.device("cpu")
"""


@pytest.mark.slow
def test_generate_split_over_two_processes_writes_the_one_process_image_once(tmp_path):
    """The ranks of ``generate --parallel 2`` (started here with torchrun on the CPU, as the flag starts them on
    GPUs): the first writes the image and stores both evaluations; the image is the one-process image."""
    import sqlite3
    import subprocess
    import sys

    from conftest import ROOT
    from PIL import Image

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITE_PATCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)]),
           "TMPDIFF_CACHE_DIR": str(tmp_path / "cache"), "TMPDIFF_LPIPS_URL": "off"}
    common = ["generate", "--model", "tiny-flux", "--steps", "4", "--schedule", "fp32,int8*2,skip"]
    split = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                            "-m", "tmpdiff", "--device", "cpu", *common, "--parallel", "2",
                            "--db", str(tmp_path / "split.db"), "--out", str(tmp_path / "split.png")],
                           capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert split.returncode == 0, split.stderr[-2000:]
    assert split.stdout.count('"steps_run"') == 1  # one line, from the first process
    assert json.loads(split.stdout.strip().splitlines()[-1])["split_over_processes"] == 2
    from tmpdiff.runner import Engine, RunSettings

    single = Engine("cpu").generate(RunSettings(model="tiny-flux", steps=4), "fp32,int8*2,skip").image
    a, b = (np.asarray(image, dtype=np.int16) for image in (Image.open(tmp_path / "split.png"), single))
    assert np.abs(a - b).max() <= 2  # 8-bit pixels; int8's rounding at most
    with sqlite3.connect(tmp_path / "split.db") as db:
        assert db.execute("select count(*) from evaluations").fetchone()[0] == 2  # reference and schedule


def test_generate_parallel_on_a_machine_without_gpus_says_so():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "tmpdiff", "--device", "cpu", "generate", "--parallel", "2",
                             "--out", "x.png"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --parallel 2 splits one image over 2 CUDA GPUs; this machine has 0 "
                                     "(on the CPU, leave --parallel out)")
