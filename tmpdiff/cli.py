"""Command line: ``tmpdiff generate|search|sweep|warmup|precisions|models|cache`` (or ``python -m tmpdiff``).

User mistakes print one line on stderr and exit 2; no traceback. The CLI is a front end like
``ui/``: it alone reaches for the ``cache`` package, and only when a command needs it, so
importing the engine never loads a database library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .launch import check_processes, refusal_exit, run_over_gpus
from .models import DEFAULT_MODEL, MODELS

if TYPE_CHECKING:
    from .latency import CostTable
    from .runner import Engine, RunSettings

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PHASES: dict[str, float] = {}  # where a command's seconds went (generate --verbose)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tmpdiff", description="Temporal mixed precision for diffusion.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="render one image with a per-step precision schedule")
    gen.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name (default {DEFAULT_MODEL}); see `models`")
    gen.add_argument("--prompt", default=None, help="prompt, or class name for class-conditional models")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--size", type=int, default=None, help="image height and width (default: the model's)")
    gen.add_argument("--guidance", type=float, default=None)
    gen.add_argument("--schedule", default=None,
                     help="e.g. 'bf16*4,fp8*20,bf16*4' (default: every step in the reference precision)")
    _add_compile_flags(gen)
    gen.add_argument("--out", required=True, type=Path, help="PNG file to write")
    gen.add_argument("--verbose", action="store_true",
                     help="add where the seconds went to the output line: imports, cache database, weights, "
                          "reference image, schedule image (variant builds included), VAE decoding, writing")
    gen.add_argument("--parallel", type=int, default=1, metavar="N",
                     help="one image split over N CUDA GPUs of this machine (context parallelism; the schedule "
                          "still switches per step): starts N processes through torchrun")
    _add_costs_flag(gen)
    _add_cache_flags(gen)

    search = commands.add_parser("search", help="find a per-step schedule for a quality or speed target")
    search.add_argument("--model", default=DEFAULT_MODEL)
    search.add_argument("--steps", type=int, default=None)
    search.add_argument("--size", type=int, default=None)
    search.add_argument("--guidance", type=float, default=None)
    objective = search.add_mutually_exclusive_group()
    objective.add_argument("--target-ssim", type=float, default=None, help="quality floor: mean SSIM (default 0.9)")
    objective.add_argument("--target-speedup", type=float, default=None, help="speed target, e.g. 1.5")
    search.add_argument("--ladder", default=None, help="e.g. 'fp32,int8wo,skip' (default: measured here)")
    search.add_argument("--prompts", type=Path, default=None, help="text file, one prompt per line, or a TSV")
    search.add_argument("--num-prompts", type=int, default=4, help="calibration prompts to use (default 4)")
    search.add_argument("--seeds", default="0,1", help="comma-separated calibration seeds (default 0,1)")
    search.add_argument("--validation-seeds", default="1000,1001", help="seeds to re-check the result on")
    search.add_argument("--exhaustive", action="store_true", help="also search every schedule (small T only)")
    search.add_argument("--probe-stride", type=int, default=3,
                        help="probe single-step degradations on every Nth step, interpolate between (default 3; "
                             "1 probes every step)")
    search.add_argument("--additivity-samples", type=int, default=0,
                        help="mixed schedules that check whether single-step losses add up, and feed the additive "
                             "planner (default 0: the bisection does not use them; 6 is a good check)")
    search.add_argument("--batch-size", type=int, default=1,
                        help="calibration images per pipeline call (default 1); larger batches make fewer denoiser "
                             "calls, halved automatically when GPU memory runs out")
    search.add_argument("--no-replay", action="store_true",
                        help="compute every step of every evaluation (replay of shared prefixes is exact; "
                             "this is for checking it)")
    _add_compile_flags(search)
    search.add_argument("--json", type=Path, required=True, help="report file to write")
    _add_costs_flag(search)
    _add_ray_flags(search)
    _add_cache_flags(search)

    sweep = commands.add_parser("sweep", help="evaluate models x prompts x seeds x schedules from a spec file")
    sweep.add_argument("spec", type=Path, help="a .toml grid or a .csv list of evaluations (see the README)")
    sweep.add_argument("--csv", type=Path, required=True, help="results file to write, one row per evaluation")
    sweep.add_argument("--no-replay", action="store_true", help="compute every step (replay is exact)")
    _add_compile_flags(sweep)
    _add_ray_flags(sweep)
    _add_cache_flags(sweep)

    warm = commands.add_parser("warmup", help="compile precision variants once and keep them in the cache folder")
    warm.add_argument("--model", default=DEFAULT_MODEL)
    warm.add_argument("--precisions", default=None, help="comma-separated, e.g. 'bf16,fp8' (default: the reference)")
    warm.add_argument("--size", type=int, default=None, help="image size to compile for (default: the model's)")
    warm.add_argument("--aot", action="store_true", default=None,
                      help="ahead-of-time packages instead of torch.compile")
    warm.add_argument("--cache-dir", type=Path, default=None, help=CACHE_DIR_HELP)

    commands.add_parser("precisions", help="list the precision registry on this device")
    commands.add_parser("models", help="list the model registry")

    cache = commands.add_parser("cache", help="move evaluations between machines")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    for name, text in (("export", "write every evaluation to a JSON file"),
                       ("import", "validate and add the evaluations of an export file")):
        sub = cache_commands.add_parser(name, help=text)
        sub.add_argument("file", type=Path)
        sub.add_argument("--db", default=None, help=DB_HELP)
        sub.add_argument("--cache-dir", type=Path, default=None, help=CACHE_DIR_HELP)
        if name == "import":
            sub.add_argument("--replace", action="store_true",
                             help="overwrite stored evaluations that the file holds differently (refused otherwise)")
    return parser


DB_HELP = ("cache database: a file path (SQLite; default: in the cache folder) or a PostgreSQL URL "
           "(postgresql+psycopg://user@host/db) shared by many machines")
CACHE_DIR_HELP = "tmpdiff cache folder for compiled variants and the default database " \
    "(default: $TMPDIFF_CACHE_DIR or the user cache folder)"


def _add_costs_flag(parser: argparse.ArgumentParser) -> None:
    from .cost_tables import shipped_tables

    parser.add_argument("--costs", metavar="FILE|NAME",
                        help="predict latency on another device from its measured step costs: a CostTable JSON "
                             f"file or a shipped table ({', '.join(shipped_tables())})")


def _add_ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None,
                        help="spread the evaluations over N Ray actors (local Ray; one GPU each on CUDA)")
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="run the actors on the Ray cluster at ADDRESS (e.g. ray://head:10001 or auto)")


def _add_cache_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help=DB_HELP)
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the evaluation cache")
    parser.add_argument("--cache-dir", type=Path, default=None, help=CACHE_DIR_HELP)


def _add_compile_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile each variant (default: on for CUDA)")
    parser.add_argument("--aot", action="store_true", default=None,
                        help="ahead-of-time compiled variants: built once, loaded by later processes")


def open_cache(path: str | None, enabled: bool = True, cache_dir: Path | None = None):
    """The cache store, or None with --no-cache."""
    if not enabled:
        return None
    from .cache import Cache, default_db_path

    return Cache(path or default_db_path(cache_dir))


def run() -> None:
    """The ``tmpdiff`` command: :func:`main`, then a quick exit."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left early (`tmpdiff models | head -1`): nothing to tell, as Python's
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # docs advise; exit 1 as Python does
        code = 1
    leave(code)


def leave(code: int) -> None:
    """Ends the process the way the interpreter would (threads joined, ``atexit`` handlers run, output flushed)
    but without tearing down every module and object one by one: after a compiled model that teardown took
    1.3 s of a 12 s command on the CPU, time the user waits for and nothing needs."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # joins non-daemon threads, as interpreter exit does
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"  # one line each
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and argument mistakes end here, before any heavy import
    started = time.perf_counter()
    age = _process_age()
    if age is not None:
        PHASES["start"] = age  # the interpreter and this module
    if args.command in ("cache", "models"):  # moving evaluations, listing the registry: no torch, no pipeline
        return _in_one_line(lambda: _without_torch(args))
    from .models import quiet_libraries
    from .runner import default_device

    if args.command in ("generate", "search", "sweep"):
        from . import evaluate, study  # noqa: F401  (the engine's other heavy imports, counted here)
    PHASES["imports"] = time.perf_counter() - started  # torch, diffusers and the engine: paid once a process

    quiet_libraries()
    return _in_one_line(lambda: _command(args, _checked_device(args.device) or default_device(), argv))


def _without_torch(args: argparse.Namespace) -> int:
    _checked_device(args.device)  # a mistaken --device is one, whatever the command
    return _cache(args) if args.command == "cache" else _list_models()


def _list_models() -> int:
    for spec in MODELS.values():
        print(f"{spec.name:<13} {spec.family:<7} {spec.dtype:<5} {spec.steps:>3} steps {spec.size:>5}px  "
              f"{spec.source}")
    return 0


def _in_one_line(command: Callable[[], int]) -> int:
    """Runs a command; a user's mistake (a ``ValueError``) or a file it cannot read or write (an ``OSError``)
    is one line on stderr and the usage exit code."""
    try:
        return command()
    except ValueError as exc:
        return refused(exc)
    except BrokenPipeError:  # not a file mistake: the reader of our output left (see run())
        raise
    except OSError as exc:  # a file or folder the command reads or writes: its path and why, in one line
        where = f": {exc.filename}" if exc.filename else ""
        _say(f"error: {exc.strerror or exc}{where}")
        return refusal_exit(EXIT_USAGE)


def refused(exc: ValueError) -> int:
    """A user's mistake, in this command line's words: one line on stderr and the usage exit code (the tmpdiff
    command's and the app's)."""
    _say(f"error: {in_cli_words(str(exc))}")
    return refusal_exit(EXIT_USAGE)


def _command(args: argparse.Namespace, device: str, argv: list[str] | None) -> int:
    from .runner import precision_table

    _check_outputs(args)
    if args.command == "precisions":
        for row in precision_table(device):
            print(f"{row['name']:<7} {row['status']:<12} {row['description']}  [{row['reason']}]")
    elif args.command == "search":
        return _search(args, device)
    elif args.command == "sweep":
        return _sweep(args, device)
    elif args.command == "warmup":
        return _warmup(args, device)
    else:
        check_processes(args.parallel)
        if args.parallel > 1 and "RANK" not in os.environ:  # the same command in N processes, one a GPU
            return run_over_gpus(args.parallel, device, "tmpdiff", argv)
        return _generate(args, device)
    return 0


def _process_age() -> float | None:
    """Seconds since this process started (Linux), or None where the system does not say."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)


def _say(line: str) -> None:
    """One line on stderr, from one process: the first of a ``--parallel`` launch speaks for all of them."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)


# The engine's field names (``name`` or ``name=value``), as this command line spells them.
FLAGS = {"exhaustive=true": "--exhaustive", "replace=true": "--replace", "device='cpu'": "--device cpu",
         "db=": "--db ", "db": "--db",
         "costs=": "--costs ", "costs": "--costs", "workers=": "--workers ",
         "additivity_samples=": "--additivity-samples ",
         "target_ssim": "--target-ssim", "target_speedup": "--target-speedup", "batch_size": "--batch-size",
         "additivity_samples": "--additivity-samples", "probe_stride": "--probe-stride"}


def in_cli_words(message: str) -> str:
    """An engine message with its field names replaced by this command line's flags."""
    import re

    # A field name stands alone: never part of a path or file name (``x.db``, ``/srv/costs/``).
    with_values = "|".join(re.escape(name) for name in FLAGS if name.endswith("="))
    bare = "|".join(re.escape(name) for name in FLAGS if not name.endswith("="))
    message = re.sub(rf"(?<![\w./-])({with_values})", lambda m: FLAGS[m.group(1)], message)
    return re.sub(rf"(?<![\w./-])({bare})(?![\w./-])", lambda m: FLAGS[m.group(1)], message)


def _checked_device(device: str | None) -> str | None:
    import re

    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    return device


def _check_outputs(args: argparse.Namespace) -> None:
    """Output paths checked before any work, so that no result is computed only to be lost."""
    for flag in ("out", "json", "csv"):
        path = getattr(args, flag, None)
        if path is None:
            continue
        if path.is_dir():
            raise ValueError(f"--{flag} {str(path)!r} is a folder: name a file in it")
        if not path.parent.exists():
            raise ValueError(f"--{flag} folder {str(path.parent)!r} does not exist")
    if getattr(args, "cache_command", None) == "export" and not args.file.parent.exists():
        raise ValueError(f"export folder {str(args.file.parent)!r} does not exist")


def _generate(args: argparse.Namespace, device: str) -> int:
    from .evaluate import Evaluator
    from .models import get_model
    from .replay import ReplayStore
    from .runner import RunSettings
    from .study import Study

    video = args.model in MODELS and get_model(args.model).frames > 0
    if args.out.suffix.lower() not in ((".png", ".webp") if video else (".png",)):
        raise ValueError(f"--out must name a .png file{' (an animated PNG) or a .webp file' if video else ''}, "
                         f"got {str(args.out)!r}")
    if not args.out.parent.exists():
        raise ValueError(f"--out folder {str(args.out.parent)!r} does not exist")
    settings = RunSettings(model=args.model, prompt=args.prompt, negative_prompt=args.negative_prompt,
                           seed=args.seed, steps=args.steps, size=args.size, guidance=args.guidance)
    engine = _engine(args, device)
    schedule = engine.check_schedule(args.schedule or settings.reference_schedule(), settings)
    target = _target_costs(args)
    split = _split_over_processes(engine, settings, args.parallel) if args.parallel > 1 else 0
    clock = time.perf_counter()
    store = open_cache(args.db, not args.no_cache, args.cache_dir)
    # One image: predicted seconds only from a cost table a search stored (or --costs), never measured here.
    # Split over processes, each computes both images (no cache hits: one process answering from the cache while
    # another computes would stall the exchanges between them); the first stores them.
    # The schedule replays what it shares with the reference just computed (its first steps, say).
    evaluator = Evaluator(engine, None if split else store, measures_costs=False, replay=ReplayStore())
    Study(evaluator, store).load_stored_costs(settings)
    store_s, clock = time.perf_counter() - clock, time.perf_counter()
    reference = evaluator.reference(settings)  # what evaluate() does first: timed apart for --verbose
    reference_s, clock = time.perf_counter() - clock, time.perf_counter()
    evaluation = evaluator.beside(reference, settings, schedule)
    schedule_s, clock = time.perf_counter() - clock, time.perf_counter()
    if split:
        from .parallel import is_main_process

        if not is_main_process():
            return 0
        keeper = Evaluator(engine, store)
        keeper.keep(reference)
        keeper.keep(evaluation)
    save_result(evaluation.image, args.out, video)
    line = {"prompt": settings.resolved_prompt, "seed": settings.seed, **evaluation.summary(), "out": str(args.out)}
    if split:
        line["split_over_processes"] = split
    if args.verbose:
        weights = engine.load_seconds.get(settings.model, 0.0)
        PHASES.update({"cache_database": store_s, "weights": weights,
                       "reference_image": max(reference_s - weights, 0.0), "schedule_image": schedule_s,
                       "vae_decode_in_images": evaluation.vae_seconds or 0.0, "write": time.perf_counter() - clock})
        line["phase_seconds"] = {k: round(v, 3) for k, v in PHASES.items()}
    if target is not None:
        from .cost_tables import target_prediction

        line["predicted_on"] = target_prediction(target, settings.reference_schedule(), schedule)
    print(json.dumps(line))
    return 0


def _split_over_processes(engine: Engine, settings: RunSettings, processes: int) -> int:
    """In a process of a ``--parallel`` launch: joins the others and splits the model's denoisers over them;
    returns how many processes the denoisers are split over, as their context-parallel config says."""
    from .parallel import split_degree

    engine.split_over(processes)
    return split_degree(engine.pipeline(settings.model))


def save_result(image: Any, path: Path, video: bool = False, fps: int = 16) -> None:
    """An image as PNG; a video (a frame sheet) as a lossless animated PNG or WebP that plays in any browser (no
    video encoder is needed, and no frame loses a bit)."""
    if not video:
        image.save(path)
        return
    from .metrics import write_animation

    write_animation(image, path, "WEBP" if path.suffix.lower() == ".webp" else "PNG", fps)


def _target_costs(args: argparse.Namespace) -> CostTable | None:
    """The ``--costs`` table (checked against the model), or None."""
    from .cost_tables import load_cost_table

    return load_cost_table(args.costs, args.model) if args.costs else None


def _engine(args: argparse.Namespace, device: str) -> Engine:
    """The engine for a command's compile flags and cache folder, checked up front."""
    from .compile_cache import cache_root, check_cache_dir
    from .runner import Engine, choose_compile, describe_build

    cache_dir = check_cache_dir(cache_root(args.cache_dir))
    engine = Engine(device=device, compile=choose_compile(args.compile, args.aot), cache_dir=cache_dir)
    engine.on_build = lambda precision, mode, expected: print(describe_build(precision, mode, expected),
                                                              file=sys.stderr, flush=True)
    return engine


def _warmup(args: argparse.Namespace, device: str) -> int:
    from torch._dynamo.utils import counters
    from tqdm import tqdm

    from .models import get_model
    from .runner import RunSettings, describe_build

    spec = get_model(args.model)
    names = [n.strip() for n in (args.precisions or spec.dtype).split(",")]
    if any(not n for n in names) or "skip" in names:
        raise ValueError(f"--precisions must name precisions to compile, e.g. 'bf16,fp8', got {args.precisions!r} "
                         "('skip' has nothing to compile)")
    args.compile = True  # warming up means compiling, on the CPU too
    engine = _engine(args, device)
    settings = RunSettings(model=args.model, size=args.size, steps=2)
    for name in names:
        engine.check_schedule(f"{name}*2", settings)  # every name known and usable here, before any work
    bar = tqdm(names, unit="precision", desc="warmup", file=sys.stderr)
    engine.on_build = lambda precision, mode, expected: bar.set_postfix_str(describe_build(precision, mode, expected))
    rows = []
    for name in bar:
        misses = counters["inductor"]["fxgraph_cache_miss"]
        builds = engine.warm(settings, name)
        rows.append({"precision": name, "mode": engine.mode.value,
                     "seconds": round(sum(b.seconds for b in builds), 2),
                     "from_cache": all(b.from_cache for b in builds) if builds else None,
                     "inductor_compilations": counters["inductor"]["fxgraph_cache_miss"] - misses})
    bar.close()
    print(json.dumps({"model": args.model, "size": settings.resolved_size, "device": device,
                      "cache_dir": str(engine.compile_cache.root), "variants": rows}))
    return 0


def _search(args: argparse.Namespace, device: str) -> int:
    from tqdm import tqdm

    from .models import get_model
    from .prompts import calibration_prompts
    from .search_run import SearchRequest, parse_seeds
    from .study import Study

    if not args.json.parent.exists():
        raise ValueError(f"--json folder {str(args.json.parent)!r} does not exist")
    spec = get_model(args.model)
    request = SearchRequest(
        model=args.model, prompts=tuple(calibration_prompts(spec.labels, args.num_prompts, args.prompts)),
        seeds=parse_seeds(args.seeds, "--seeds"),
        validation_seeds=parse_seeds(args.validation_seeds, "--validation-seeds"),
        steps=args.steps, size=args.size, guidance=args.guidance,
        ladder=tuple(args.ladder.split(",")) if args.ladder else None,
        target_ssim=args.target_ssim if args.target_ssim is not None or args.target_speedup else 0.9,
        target_speedup=args.target_speedup, exhaustive=args.exhaustive, replay=not args.no_replay,
        probe_stride=args.probe_stride, batch_size=args.batch_size, additivity_samples=args.additivity_samples,
    )
    if request.batch_size > 1 and (args.workers is not None or args.ray is not None):
        # Each actor runs one calibration image per call: a batch size would be reported but never used.
        raise ValueError(f"--batch-size {request.batch_size} does not combine with --workers/--ray (each Ray actor "
                         "runs one image per call): drop one of them")
    target = _target_costs(args)
    store = open_cache(args.db, not args.no_cache, args.cache_dir)
    study = Study(_search_evaluator(args, device, store), store, target)
    bar = tqdm(total=1, unit="eval", desc="search", file=sys.stderr)

    def progress(done: int, planned: int, what: str) -> None:
        bar.total = planned
        bar.n = done
        bar.set_postfix_str(what[:40])
        bar.refresh()

    try:
        report = study.search(request, progress=progress)
    except KeyboardInterrupt:
        return _interrupted(bar, "search")
    bar.close()
    data = report.to_dict()
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    try:
        plots = _write_plots(data, args.json)
    except ImportError:  # a declared dependency, but the report above must never be lost to its absence
        print("warning: plotly is not installed: no HTML plots written (pip install plotly)", file=sys.stderr)
        plots = []
    summary = {**report.summary(), "evaluation_bound": report.evaluation_bound,
               "denoiser_calls": report.denoiser_calls["total"]}
    if target is not None:
        from .cost_tables import prediction_label

        summary["speedup_label"] = prediction_label(target)
    for note in report.ladder_notes:
        print(f"note: {note}", file=sys.stderr)
    for phase in report.skipped:
        print(f"skipped: {in_cli_words(phase)}", file=sys.stderr)
    if report.validation.meets_target is False:
        print(f"warning: on unseen seeds the schedule scored SSIM {report.validation.ssim:.3f}, "
              f"below the {request.target_ssim} floor", file=sys.stderr)
    print(json.dumps({**summary, "plots": plots}))
    return 0


def _sweep(args: argparse.Namespace, device: str) -> int:
    from tqdm import tqdm

    from .study import Study
    from .sweep import load_spec, summarize, write_csv

    if not args.csv.parent.exists():
        raise ValueError(f"--csv folder {str(args.csv.parent)!r} does not exist")
    items = load_spec(args.spec)
    store = open_cache(args.db, not args.no_cache, args.cache_dir)
    study = Study(_search_evaluator(args, device, store), store)
    bar = tqdm(total=len(items), unit="eval", desc="sweep", file=sys.stderr)

    def progress(done: int, planned: int, what: str) -> None:
        bar.set_postfix_str(what[:40], refresh=False)
        bar.update(done - bar.n)

    try:
        rows = study.sweep(items, progress=progress, replay=not args.no_replay, spec=str(args.spec))
    except KeyboardInterrupt:
        return _interrupted(bar, "sweep")
    bar.close()
    write_csv(rows, args.csv)
    calls = study.evaluator.engine.calls
    print(json.dumps({"evaluations": len(rows), "from_cache": sum(r["cached"] for r in rows), "csv": str(args.csv),
                      "denoiser_calls": calls["denoiser"], "schedules": summarize(rows)}))
    return 0


def _interrupted(bar: Any, command: str) -> int:
    """Ctrl-C during a search or sweep: nothing is lost, since every finished evaluation is in the cache."""
    bar.close()
    print(f"error: {command} interrupted; every finished evaluation is cached, run it again to resume",
          file=sys.stderr)
    return EXIT_INTERRUPTED


def _search_evaluator(args: argparse.Namespace, device: str, store: Any) -> Any:
    """The evaluator of a search or sweep: in this process, or spread over Ray actors with --workers/--ray."""
    from .evaluate import Evaluator

    engine = _engine(args, device)
    if args.workers is None and args.ray is None:
        return Evaluator(engine, store)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be 1 or more, got {args.workers}")
    from functools import partial

    from .cache import Cache, default_db_path
    from .distributed import DistributedEvaluator, start_ray

    workers = start_ray(args.ray, args.workers, device)
    location = None if store is None else (args.db or str(default_db_path(args.cache_dir)))
    factory = partial(Cache, location) if location else _no_store
    return DistributedEvaluator(engine, store, factory, workers)


def _no_store() -> None:
    return None


def _write_plots(report: dict, json_path: Path) -> list[str]:
    """Interactive HTML beside the JSON: the Pareto front over every evaluation, and the additivity check
    (degradation predicted from single steps against measured) when the search ran it."""
    from . import plots

    figures = {"pareto": plots.search_pareto(report), "additivity": plots.additivity(report)}
    paths = []
    for name, figure in figures.items():
        if figure is not None:
            paths.append(json_path.with_suffix(f".{name}.html"))
            figure.write_html(paths[-1], include_plotlyjs="cdn")
    return [str(p) for p in paths]


def _cache(args: argparse.Namespace) -> int:
    _check_outputs(args)
    store = open_cache(args.db, cache_dir=args.cache_dir)
    if args.cache_command == "export":
        count = store.export(args.file)
        print(json.dumps({"exported": count, "file": str(args.file)}))
    else:
        if not args.file.is_file():
            raise ValueError(f"no such file: {str(args.file)!r}")
        count = store.import_(args.file, replace=args.replace)
        print(json.dumps({"imported": count, "db": store.where}))
    return 0
