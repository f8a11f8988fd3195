"""One image over two processes (diffusers' context parallelism, Gloo on the CPU): per-step schedules give the
one-process image, and every variant is split like the reference."""

import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port

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


def _as_launched(rank: int, world: int, port: int, device: str) -> None:
    """This spawned process as torchrun would have started it."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if device == "cpu":  # diffusers places the model on the process's accelerator; a CPU run has none to count
        torch.accelerator.device_count = lambda: 1
        torch._C._get_accelerator = lambda: torch.device("cpu")


def _worker(rank: int, world: int, port: int, out: str, device: str = "cpu", schedules=SCHEDULES) -> None:
    _as_launched(rank, world, port, device)
    import torch.distributed as dist

    from tmpdiff import load_pipeline
    from tmpdiff.pipelines import context_parallel as parallel

    assert parallel.init_process_group() == (rank, world)
    pipe = load_pipeline("tiny-flux", device)
    if device == "cuda":
        pipe = pipe.to(torch.bfloat16)
    parallel.enable_context_parallel(pipe, world)
    images = _images(pipe, schedules)
    if rank == 0:
        np.save(out, images)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_one_process_images_for_every_schedule(pipes, tmp_path):
    out = str(tmp_path / "split.npy")
    mp.start_processes(_worker, args=(2, free_port(), out), nprocs=2, join=True, start_method="spawn")
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
    mp.start_processes(_worker, args=(2, free_port(), out, "cuda", schedules), nprocs=2, join=True,
                       start_method="spawn")
    single = _images(load_pipeline("tiny-flux", "cuda").to(torch.bfloat16), schedules)
    for text, a, b in zip(schedules, np.load(out), single, strict=True):
        assert np.abs(a - b).mean() < 0.01, text  # bf16 sums in another order on two GPUs: a small difference


def test_context_parallel_needs_a_launcher_and_a_head_count_it_divides(pipes, monkeypatch):
    from tmpdiff.pipelines import context_parallel as parallel

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc-per-node"):
        parallel.init_process_group()
    with pytest.raises(ValueError, match="2 attention heads, which 3 processes cannot share"):
        parallel.enable_context_parallel(pipes("tiny-flux"), 3)


SITE_PATCH = """import torch
torch.accelerator.device_count = lambda: 1  # diffusers places the model on the process's accelerator
torch._C._get_accelerator = lambda: torch.device("cpu")
"""
TORCHRUN_2 = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def _cpu_launch_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a torchrun launch on the CPU (its processes see one accelerator: the CPU), tmpdiff
    importable from the checkout."""
    from conftest import ROOT

    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "sitecustomize.py").write_text(SITE_PATCH)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)]),
            "TMPDIFF_LPIPS_URL": "off", **extra}


def _said(stderr: str) -> str:
    """What a launch's processes said (their one-line errors), not only torchrun's report after them."""
    return "\n".join(line for line in stderr.splitlines() if line.startswith(("error:", "warning:"))) or stderr[-2000:]


@pytest.mark.slow
def test_generate_split_over_two_processes_writes_the_one_process_image_once(tmp_path):
    """The ranks of ``generate --parallel 2`` (started here with torchrun on the CPU, as the flag starts them on
    GPUs): the first writes the image and stores both evaluations; the image is the one-process image."""
    import sqlite3
    import subprocess
    import sys

    from conftest import ROOT
    from PIL import Image

    env = _cpu_launch_env(tmp_path, TMPDIFF_CACHE_DIR=str(tmp_path / "cache"))
    common = ["generate", "--model", "tiny-flux", "--steps", "4", "--schedule", "fp32,int8*2,skip"]
    split = subprocess.run([sys.executable, *TORCHRUN_2, "-m", "tmpdiff", "--device", "cpu", *common,
                            "--parallel", "2", "--db", str(tmp_path / "split.db"),
                            "--out", str(tmp_path / "split.png")],
                           capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert split.returncode == 0, _said(split.stderr)
    assert split.stdout.count('"steps_run"') == 1  # one line, from the first process
    assert json.loads(split.stdout.strip().splitlines()[-1])["split_over_processes"] == 2
    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings

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


MIRRORED = ["fp32,int8*2,skip", "fp32*2,bf16*2"]


def _mirror_worker(rank: int, world: int, port: int, out: str, device: str = "cpu",
                   schedules=MIRRORED) -> None:
    """An app split over two processes, without the page: the first generates, is cancelled mid-image, then
    generates again; the second only follows."""
    _as_launched(rank, world, port, device)
    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.engine.split_app import follow, release_followers
    from tmpdiff.steps.cancel import Cancelled, cancellable

    engine = Engine(device, compile=device == "cuda")
    engine.split_over(world, mirror=True)
    if rank != 0:
        follow(engine)
        np.save(out + f".{rank}.npy", np.array([engine.calls["denoiser"]]))
        return
    try:  # a model diffusers cannot split: refused in both processes, and the second keeps following
        engine.generate(RunSettings(model="shapes-dit"))
        raise AssertionError("shapes-dit was split")
    except ValueError as exc:
        assert "cannot be split over GPUs" in str(exc) and "'shapes-dit'" in str(exc), exc
    settings = RunSettings(model="tiny-flux", steps=4)
    first = np.asarray(engine.generate(settings, schedules[0]).image)
    checks = iter(range(100))
    try:
        with cancellable(lambda: next(checks) >= 2):  # the third step boundary: stop
            engine.generate(settings, schedules[1])
        raise AssertionError("not cancelled")
    except Cancelled:
        pass
    second = np.asarray(engine.generate(settings, schedules[1]).image)  # the others are ready again
    release_followers(engine)
    np.save(out, np.stack([first, second]))
    np.save(out + ".0.npy", np.array([engine.calls["denoiser"]]))


def _run_mirrored(tmp_path, device: str, schedules=MIRRORED):
    out = str(tmp_path / "mirrored.npy")
    mp.start_processes(_mirror_worker, args=(2, free_port(), out, device, schedules), nprocs=2, join=True,
                       start_method="spawn")
    leader, follower = (int(np.load(out + f".{rank}.npy")[0]) for rank in (0, 1))
    return np.load(out), leader, follower


@pytest.mark.slow
def test_a_split_app_keeps_its_processes_in_step_through_a_cancelled_image(tmp_path):
    images, leader, follower = _run_mirrored(tmp_path, "cpu")
    assert leader == follower  # the same denoiser calls: the cancelled image stopped at the same step in both
    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings

    engine = Engine("cpu")
    for schedule, split in zip(MIRRORED, images, strict=True):
        single = np.asarray(engine.generate(RunSettings(model="tiny-flux", steps=4), schedule).image)
        assert np.abs(split.astype(np.int16) - single).max() <= 2, schedule  # 8-bit pixels; rounding at most


@pytest.mark.gpu
def test_a_split_app_on_two_gpus_keeps_its_processes_in_step(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    schedules = ["fp32,fp8*2,fp32", "fp32*2,bf16*2"]  # compiled variants, NCCL exchanges, a cancelled image
    images, leader, follower = _run_mirrored(tmp_path, "cuda", schedules)
    assert leader == follower
    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings

    engine = Engine("cuda", compile=True)
    for schedule, split in zip(schedules, images, strict=True):
        single = np.asarray(engine.generate(RunSettings(model="tiny-flux", steps=4), schedule).image)
        assert np.abs(split.astype(np.int16) - single).mean() < 1.0, schedule  # 8-bit pixels, sums reordered


def test_call_arguments_cross_processes_as_json_with_the_generators_state():
    from tmpdiff.pipelines.context_parallel import decode_call_kwargs, encode_call_kwargs

    generator = torch.Generator().manual_seed(7)
    torch.randn(3, generator=generator)  # an advanced state, not just a seed
    encoded = json.loads(json.dumps(encode_call_kwargs({"prompt": ["a", "b"], "height": 64, "generator": generator,
                                                         "guidance_scale": 3.5, "latents": None})))
    decoded = decode_call_kwargs(encoded)
    assert decoded["prompt"] == ["a", "b"] and decoded["height"] == 64 and decoded["latents"] is None
    assert torch.equal(torch.randn(4, generator=decoded["generator"]), torch.randn(4, generator=generator))
    with pytest.raises(ValueError, match="cannot pass latents=Tensor"):
        encode_call_kwargs({"latents": torch.zeros(1)})


@pytest.mark.slow
def test_the_app_split_over_two_processes_serves_the_one_process_image(tmp_path):
    """``tmpdiff-app --parallel 2`` as torchrun starts it (on the CPU here, Gloo): the first process serves the
    page, the second makes the same pipeline calls; the served image is the one-process image, and its stored
    evaluation says it was split (its seconds never answer for one GPU's)."""
    import signal
    import sqlite3
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import ROOT, free_port
    from gradio_client import Client
    from PIL import Image

    env = _cpu_launch_env(tmp_path)
    port, db = free_port(), tmp_path / "app.db"
    app = subprocess.Popen([sys.executable, *TORCHRUN_2, "-m", "tmpdiff.ui.serve", "--device", "cpu", "--parallel",
                            "2", "--model", "tiny-flux", "--port", str(port), "--db", str(db),
                            "--cache-dir", str(tmp_path / "cache")],
                           env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "w"),  # noqa: SIM115
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert app.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()[-3000:]
                time.sleep(1)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        from tmpdiff.engine.runner import Engine
        from tmpdiff.engine.settings import RunSettings

        engine = Engine("cpu")
        for schedule in MIRRORED:
            (_, served), metrics = client.predict(model="tiny-flux", steps=4, schedule=schedule,
                                                  api_name="/generate")
            assert metrics["split_over_processes"] == 2 and metrics["steps_run"] == schedule.replace(
                "int8*2", "int8,int8").replace("fp32*2", "fp32,fp32").replace("bf16*2", "bf16,bf16").split(",")
            single = np.asarray(engine.generate(RunSettings(model="tiny-flux", steps=4), schedule).image)
            assert np.abs(np.asarray(Image.open(served), dtype=np.int16) - single).max() <= 2, schedule
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        app.wait(60)
    with sqlite3.connect(db) as stored:
        devices = [json.loads(row[0]) for row in stored.execute("select device from evaluations")]
    assert len(devices) == 3 and all(d["split_over"] == 2 for d in devices)  # a reference, two schedules


def test_app_parallel_mistakes_are_one_line_and_exit_2():
    import subprocess
    import sys

    from conftest import ROOT

    for flags, message in ((["--parallel", "2", "--device", "cpu"],
                            "error: --parallel 2 splits one image over 2 CUDA GPUs; this machine has 0 (on the CPU, "
                            "leave --parallel out)"),
                           (["--parallel", "0"], "error: --parallel takes a number of GPUs, 1 or more; got 0")):
        result = subprocess.run([sys.executable, "app.py", *flags, "--port", "0"], capture_output=True, text=True,
                                timeout=300, cwd=ROOT)
        assert result.returncode == 2 and result.stderr.strip() == message, result.stderr


@pytest.mark.slow
def test_a_model_that_cannot_be_split_is_one_line_and_exit_2_from_the_command(tmp_path):
    """Inside a launch (torchrun, as ``--parallel`` starts it; the CPU here), the app and ``generate`` refuse
    ``shapes-dit`` (no context-parallel plan) in one line; the launching command gets exit code 2 and torchrun
    reports no failed worker (no traceback)."""
    import subprocess
    import sys

    from conftest import ROOT, free_port

    from tmpdiff.frontends.processes import EXIT_CODE_FILE_ENV

    for name, command in (("app", ["-m", "tmpdiff.ui.serve", "--device", "cpu", "--parallel", "2",
                                   "--port", str(free_port()), "--db", str(tmp_path / "a.db")]),
                          ("generate", ["-m", "tmpdiff", "--device", "cpu", "generate", "--parallel", "2",
                                        "--db", str(tmp_path / "g.db"), "--out", str(tmp_path / "g.png")])):
        code_file = tmp_path / f"{name}.code"
        env = _cpu_launch_env(tmp_path, TMPDIFF_CACHE_DIR=str(tmp_path / "cache"),
                              **{EXIT_CODE_FILE_ENV: str(code_file)})
        result = subprocess.run([sys.executable, *TORCHRUN_2, *command], capture_output=True, text=True, env=env,
                                timeout=300, cwd=ROOT)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 0 and code_file.read_text() == "2", (name, result.stderr[-2000:])
        assert errors == ["error: model 'shapes-dit': its transformer (DiTTransformer2DModel) cannot be split over "
                          "GPUs: diffusers declares no context-parallel plan for it; run this model without "
                          "--parallel"], (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and "warning: process" not in result.stderr, name
    assert not (tmp_path / "g.png").exists()
