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
        (["--schedule", "fp32*4,,fp32*4"], "malformed --schedule token ''"),
        (["--schedule", "skip,fp32*7"], "'skip' cannot be the first step"),
        (["--schedule", "nvfp4*8"], "precision 'nvfp4' is unavailable"),
        (["--steps", "0"], "--steps must be from 1 to 1000, got 0"),
        (["--prompt", "purple hexagon"], "not 'purple hexagon'"),
        (["--model", "sd9"], "unknown --model 'sd9'"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, args, message):
    result = cli("generate", *args, "--out", str(tmp_path / "z.png"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "z.png").exists()


def test_search_refuses_a_batch_size_its_ray_actors_would_ignore(tmp_path):
    report = tmp_path / "r.json"
    result = cli("search", "--batch-size", "2", "--workers", "2", "--json", str(report), "--db",
                 str(tmp_path / "c.sqlite"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--batch-size 2 does not combine with --workers/--ray" in result.stderr
    assert not report.exists() and not (tmp_path / "c.sqlite").exists()  # refused before any work


def test_a_host_memory_budget_that_is_not_a_size_is_refused_in_one_line(tmp_path):
    out = tmp_path / "x.png"
    result = cli("generate", "--host-memory", "-2", "--out", str(out), "--db", str(tmp_path / "c.sqlite"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--host-memory takes a positive number of GiB, got -2" in result.stderr and not out.exists()


def test_precisions_lists_the_registry():
    result = cli("precisions")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names[:3] == ["fp32", "bf16", "fp16"] and "skip" in names


def _table_for(tmp_path, architecture, step_ms):
    table = {"version": 1, "device": "cuda", "compiled": True, "steps": 8, "fixed_seconds": 0.01, "simulated": [],
             "step_seconds": {k: v / 1000 for k, v in step_ms.items()}, "architecture": architecture,
             "device_name": "NVIDIA Test GPU", "note": "made by the test"}
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(table))
    return path


def test_generate_predicts_latency_on_the_device_of_a_cost_table(tmp_path):
    costs = _table_for(tmp_path, "shapes-dit", {"fp32": 10.0, "int8wo": 5.0, "skip": 0.0})
    result = cli("generate", "--schedule", "fp32*2,int8wo*4,skip*2", "--costs", str(costs),
                 "--out", str(tmp_path / "x.png"))
    assert result.returncode == 0, result.stderr
    target = json.loads(result.stdout.strip().splitlines()[-1])["predicted_on"]
    assert target["label"] == "predicted on NVIDIA Test GPU, from measured step costs"
    assert target["seconds"] == pytest.approx(0.01 + 0.02 + 0.02)  # fixed + 2 x fp32 + 4 x int8wo
    assert target["speedup"] == pytest.approx((0.01 + 0.08) / 0.05, rel=1e-3)


def test_a_cost_table_of_another_architecture_is_refused_naming_both(tmp_path):
    result = cli("generate", "--model", "flux-dev-random", "--costs", "sdxl-h200", "--out", str(tmp_path / "x.png"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "sdxl architecture" in result.stderr and "flux-dev-random's flux-dev" in result.stderr
    missing = cli("generate", "--schedule", "fp32*7,int8", "--costs", str(_table_for(tmp_path, "shapes-dit",
                                                                                      {"fp32": 1.0})),
                  "--out", str(tmp_path / "x.png"))
    assert missing.returncode == 2 and "has no cost for int8" in missing.stderr


def test_search_plans_with_the_deployment_devices_costs(tmp_path):
    # On the "deployment GPU" int8wo costs more than fp32: the ladder check must drop it there.
    costs = _table_for(tmp_path, "shapes-dit", {"fp32": 10.0, "int8wo": 12.0, "skip": 0.1})
    report_path = tmp_path / "r.json"
    result = cli("search", "--steps", "4", "--ladder", "fp32,int8wo,skip", "--num-prompts", "1", "--seeds", "0",
                 "--target-ssim", "0.5", "--costs", str(costs), "--no-cache", "--json", str(report_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert "int8wo" not in report["schedule"] and any("int8wo dropped" in n for n in report["ladder_notes"])
    assert report["costs"]["device_name"] == "NVIDIA Test GPU"
    assert json.loads(result.stdout.strip().splitlines()[-1])["speedup_label"].startswith("predicted on NVIDIA")


def test_an_unreachable_speedup_is_said_in_the_users_terms_on_a_line_of_its_own(tmp_path):
    costs = _table_for(tmp_path, "shapes-dit", {"fp32": 10.0, "skip": 1.0})
    result = cli("search", "--steps", "4", "--ladder", "fp32,skip", "--num-prompts", "1", "--seeds", "0",
                 "--target-speedup", "9", "--costs", str(costs), "--no-cache", "--json", str(tmp_path / "r.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.rstrip().splitlines()[-1]  # the progress bar was closed first: the refusal starts its line
    fastest = (0.01 + 4 * 0.010) / (0.01 + 0.010 + 3 * 0.001)  # fp32,skip*3 against fp32*4, fixed seconds too
    assert last == (f"error: a 9x speed-up (--target-speedup) is out of reach on the ladder fp32, skip: its fastest "
                    f"schedule, fp32,skip*3, is predicted at {fastest:.2f}x: ask for at most {fastest:.2f}x, or add a "
                    "cheaper rung to the ladder")
    assert "target_speedup" not in last


def test_storage_and_path_mistakes_are_one_line_exit_2_before_any_work(tmp_path):
    from tmpdiff.cli.entry import main

    nested = tmp_path / "nested.json"
    nested.write_text('{"evaluations": ' + "[" * 100_000 + "]" * 100_000 + "}")
    spec = tmp_path / "s.toml"
    spec.write_text('[[grid]]\nmodels = ["shapes-dit"]\nschedules = ["reference"]\nsteps = 2\n')
    db = str(tmp_path / "c.sqlite")
    cases = [
        (["cache", "export", str(tmp_path / "missing" / "x.json"), "--db", db], "export folder"),
        (["cache", "import", str(nested), "--db", db], "nested too deeply"),
        (["sweep", str(spec), "--csv", str(tmp_path), "--db", db], "is a folder: name a file in it"),
        (["generate", "--out", str(tmp_path), "--db", db], "is a folder: name a file in it"),
        (["--device", "nonsense", "generate", "--out", str(tmp_path / "x.png")], "--device must be cpu"),
        (["cache", "import", str(tmp_path / "none.json"), "--db", db], "no such file"),
    ]
    for argv, message in cases:
        result = subprocess.run([sys.executable, "-m", "tmpdiff", *argv], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, (argv, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, (argv, result.stderr)
    assert not (tmp_path / "x.png").exists()
    assert main(["cache", "export", str(tmp_path / "ok.json"), "--db", db]) == 0


def test_generate_verbose_says_where_the_seconds_went(tmp_path):
    import time

    start = time.perf_counter()
    result = cli("generate", "--steps", "4", "--schedule", "fp32*2,bf16*2", "--out", str(tmp_path / "v.png"),
                 "--verbose", "--no-cache")
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    phases = line["phase_seconds"]
    assert set(phases) == {"start", "imports", "cache_database", "weights", "reference_image", "schedule_image",
                           "vae_decode_in_images", "write"}
    assert all(v >= 0 for v in phases.values()) and phases["imports"] > 0 and phases["weights"] > 0
    accounted = sum(phases.values()) - phases["vae_decode_in_images"]  # VAE decoding is inside the images
    assert 0.75 * wall < accounted < wall  # the phases, the interpreter's start included, are nearly the whole
    # Inside the schedule's image: the one variant it built (bf16 weights cast from the reference's), by phase.
    [build] = line["set_up"]["variants"]
    assert (build["precision"], build["mode"], build["from_cache"]) == ("bf16", "eager", False)
    assert set(build["phases"]) == {"weights"} and 0 < build["phases"]["weights"] <= build["seconds"]
    assert build["seconds"] < phases["schedule_image"] and line["set_up"]["graph_capture"] == {}


def test_the_command_exits_quickly_yet_runs_exit_handlers_and_flushes(tmp_path):
    code = ("import atexit, sys, threading, time\n"
            "from tmpdiff.cli.entry import leave\n"
            "atexit.register(lambda: print('handler ran', flush=False))\n"
            "threading.Thread(target=lambda: (time.sleep(0.5), print('thread finished'))).start()\n"
            "sys.stdout.write('unflushed ')\n"
            "leave(3)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert result.stdout.split() == ["unflushed", "thread", "finished", "handler", "ran"]


def test_generate_computes_two_images_and_predicts_only_from_a_stored_cost_table(tmp_path, monkeypatch, capsys):
    from tmpdiff.cache import Cache
    from tmpdiff.cli import entry as cli
    from tmpdiff.engine import runner
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.measure.evaluator import Evaluator
    from tmpdiff.measure.latency import CostTable
    from tmpdiff.steps.schedule import Schedule
    from tmpdiff.studies.study import Study

    calls = []
    original = runner.Engine.call_now

    def counting(self, pipe, kwargs, schedule, *rest):
        calls.append(str(schedule))
        return original(self, pipe, kwargs, schedule, *rest)

    monkeypatch.setattr(runner.Engine, "call_now", counting)
    db = str(tmp_path / "c.sqlite")
    common = ["--device", "cpu", "generate", "--steps", "4", "--db", db]
    assert cli.main([*common, "--schedule", "fp32*2,int8wo*2", "--out", str(tmp_path / "a.png")]) == 0
    assert calls == ["fp32*4", "fp32*2,int8wo*2"]  # the reference and the image: no uniform runs to time costs
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["predicted_seconds"] is None

    store = Cache(db)
    settings = RunSettings(model="shapes-dit", steps=4)
    study = Study(Evaluator(runner.Engine("cpu"), store), store)
    table = CostTable(device="cpu", compiled=False, steps=4, step_seconds={"fp32": 0.02, "int8wo": 0.01})
    store.put_costs(*study.settings_cost_key(settings), table.to_dict())  # as a search of this setting leaves it
    calls.clear()
    assert cli.main([*common, "--schedule", "fp32*3,int8wo", "--out", str(tmp_path / "b.png")]) == 0
    # The reference's pixels came from the cache; it ran again only to be timed beside the new image.
    assert calls == ["fp32*4", "fp32*3,int8wo"]
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert printed["speedup_timed_beside_reference"] is True
    assert printed["speedup"] == pytest.approx(printed["reference_seconds"] / printed["seconds"], rel=1e-2)
    assert printed["predicted_speedup"] == pytest.approx((4 * 0.02) / (3 * 0.02 + 0.01), rel=1e-3)
    assert printed["predicted_seconds"] == pytest.approx(
        table.predict(Schedule.parse("fp32*3,int8wo")), abs=1e-4)


def test_engine_messages_name_fields_and_the_command_line_says_its_flags(tmp_path):
    from tmpdiff.frontends.refusals import in_cli_words

    folder = tmp_path / "x.db"
    folder.mkdir()
    bad = cli("generate", "--db", str(folder), "--out", str(tmp_path / "a.png"))
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: --db {str(folder)!r} is a folder: give a file path"
    # The flag comes from the error's fields, never from its text: a field's name (or braces) in a path is left alone.
    from tmpdiff.cache import CacheError
    from tmpdiff.errors import literal

    error = CacheError(literal("/srv/costs/{db}/a.db is not a SQLite database") + ": pass another {db}")
    assert in_cli_words(error) == "/srv/costs/{db}/a.db is not a SQLite database: pass another --db"
    assert in_cli_words(ValueError("costs db steps")) == "costs db steps"


def test_a_reader_that_leaves_early_gets_no_error_line():
    import os

    read, write = os.pipe()
    os.close(read)  # `tmpdiff models | head -0`: nobody reads what the command prints
    try:
        done = subprocess.run([sys.executable, "-m", "tmpdiff", "models"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write)
    assert done.stderr == ""
    assert done.returncode == 1  # as Python's own advice for a closed pipe


def test_results_the_cache_cannot_keep_are_said_on_one_line_with_their_own_exit_code(tmp_path):
    db = tmp_path / "c.sqlite"
    first = cli("generate", "--steps", "4", "--schedule", "fp32*4", "--db", str(db), "--out", str(tmp_path / "a.png"))
    assert first.returncode == 0, first.stderr
    import sqlite3

    with sqlite3.connect(db) as connection:  # as its last closer leaves it: the log folded into the file
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"c.sqlite{suffix}").unlink(missing_ok=True)
    (tmp_path / "c.sqlite-shm").mkdir()  # SQLite cannot make its shared memory: the cache can only be read
    result = cli("generate", "--steps", "4", "--schedule", "fp32*2,skip*2", "--db", str(db),
                 "--out", str(tmp_path / "b.png"))
    assert result.returncode == 3, result.stderr  # the README's "computed, not kept" code
    assert (tmp_path / "b.png").exists() and json.loads(result.stdout.splitlines()[-1])["steps_run"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 result(s) were computed but could not be kept" in errors[0], result.stderr
    assert any(line.startswith("warning: the cache") for line in result.stderr.splitlines())
    assert "Traceback" not in result.stderr
    (tmp_path / "c.sqlite-shm").rmdir()
    rerun = cli("generate", "--steps", "4", "--schedule", "fp32*2,skip*2", "--db", str(db),
                "--out", str(tmp_path / "c.png"))
    assert rerun.returncode == 0 and not rerun.stderr.strip(), rerun.stderr  # kept now, and nothing to say


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine without a CUDA GPU")
def test_asking_for_a_gpu_this_machine_lacks_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tmpdiff", "--device", "cuda", "generate", "--out",
                             str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: --device 'cuda': this machine has no CUDA GPU (or no driver for it); " \
                                    "use cpu"
