"""The engine: loads each model's pipeline once and runs schedules on it, one timed pipeline call at a time."""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from PIL import Image

from tmpdiff.engine.settings import Result, RunSettings, batch_call_kwargs
from tmpdiff.engine.split_app import told_to_followers
from tmpdiff.engine.timing import SetUpSeconds, timing_vae_decode
from tmpdiff.engine.turns import TurnLock
from tmpdiff.errors import FieldError
from tmpdiff.memory.budget import OutOfMemory, resolve_budget, resolve_host_memory
from tmpdiff.memory.meter import MemoryFigures, measuring_peak
from tmpdiff.memory.placement import Plan
from tmpdiff.memory.placer import Placer, estimate_working
from tmpdiff.memory.prompt_cache import keeping_prompts
from tmpdiff.pipelines.registry import load_pipeline
from tmpdiff.steps.precisions import Status, computes, precision_status
from tmpdiff.steps.replay import ReplayStore
from tmpdiff.steps.schedule import Schedule
from tmpdiff.switching.switch import apply_schedule
from tmpdiff.variants.bank import BuildInfo, Mode
from tmpdiff.variants.compile_cache import CompileCache

if TYPE_CHECKING:
    from tmpdiff.pipelines.context_parallel import CallMirror

__all__ = ["Engine", "LoadedModel", "default_device", "device_name", "telling_builds_to", "telling_loads_to",
           "telling_plans_to"]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


BuildListener = Callable[[str, Mode, float | None], None]


class TimedCall(NamedTuple):
    """One pipeline call: its images, the schedule's handle, its seconds (the VAE's apart too) and its memory."""

    images: list[Image.Image]
    handle: Any
    seconds: float
    vae_seconds: float
    memory: MemoryFigures


# The one way the engine tells of its set-up: listeners set for a block of code, in its thread (its context) only,
# so two users of a shared engine never hear each other's; a command sets them around its whole run.
PlanListener = Callable[[str, str], None]
_LISTENER: ContextVar[BuildListener | None] = ContextVar("tmpdiff_build_listener", default=None)
_LOADING: ContextVar[Callable[[str], None] | None] = ContextVar("tmpdiff_load_listener", default=None)
_PLANS: ContextVar[PlanListener | None] = ContextVar("tmpdiff_plan_listener", default=None)


@contextmanager
def telling_builds_to(listener: BuildListener) -> Iterator[None]:
    """Within the block, in this thread only, ``listener`` hears of every variant being built (a per-call
    option: two users' requests never swap each other's progress bars on the shared engine)."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


@contextmanager
def telling_plans_to(listener: PlanListener) -> Iterator[None]:
    """Within the block, in this thread only, ``listener`` hears (model, the plan in one line) each time a model's
    placement plan under a memory budget is made or changes."""
    token = _PLANS.set(listener)
    try:
        yield
    finally:
        _PLANS.reset(token)


@contextmanager
def telling_loads_to(listener: Callable[[str], None]) -> Iterator[None]:
    """Within the block, in this thread only, ``listener`` hears the name of every model whose weights start
    loading (the app's progress bar says what a first request waits for)."""
    token = _LOADING.set(listener)
    try:
        yield
    finally:
        _LOADING.reset(token)


def _collect_dropped_pipelines(device: str) -> None:
    """Frees what dropped pipelines still hold: a pipeline's modules refer to each other (hooks, banks, shared
    tensors), so Python frees them only when its cycle collector runs, and a big tensor does not count towards
    running it; on a GPU the allocator's cache is handed back too. Cheap beside loading weights."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


@dataclass
class LoadedModel:
    """One model this engine has loaded: its pipeline, the placer that places it under a budget (None: no
    placement), and how long its weights took to load or build."""

    name: str
    pipe: Any
    placer: Placer | None = None
    load_seconds: float = 0.0


class Engine:
    """Loads pipelines once per (model, device) and runs schedules on them.

    Args:
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        compile: ``True`` (torch.compile), ``"aot"`` (ahead-of-time packages), ``False`` (eager), or
            None: compiled on CUDA, eager elsewhere.
        cache_dir: the tmpdiff cache folder that keeps compiled variants across processes
            (default: ``$TMPDIFF_CACHE_DIR`` or the user cache folder).
        gpu_memory: the GPU memory budget in GiB (``budget.py``): honoured by the allocator, and by a placement plan
            per model that streams what does not fit (``memory.placer``); default: what the GPU has free.
        host_memory: the host memory in GiB the streamed blocks may hold page-locked; a plan that needs more is
            refused before any work; default: what the system has available when each plan is made.
    """

    def __init__(self, device: str | None = None, compile: bool | str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, gpu_memory: float | None = None,
                 host_memory: float | None = None) -> None:
        self.device = _usable_device(device or default_device())
        self.budget = resolve_budget(gpu_memory, self.device)
        self.host_budget = resolve_host_memory(host_memory)
        self.mode = Mode.coerce(compile, torch.device(self.device))
        self.compile_cache = CompileCache(cache_dir)
        # Denoiser calls over every run of this engine: made, answered by replay, saved by `skip`.
        # Warm-up calls (see _warm_up) are counted apart, in "warm_up".
        self.calls: dict[str, int] = {"denoiser": 0, "replayed": 0, "skipped": 0, "warm_up": 0}
        self._models: dict[str, LoadedModel] = {}  # by model name; a placer per model under a budget
        self.set_up = SetUpSeconds()  # where seconds went that no image counts (generate --verbose shows it)
        self._lock = threading.Lock()
        # One pipeline call at a time, in the order they were asked for: a quick image asked for during a long
        # search waits for the search's current image only, and a request that comes while a cancelled
        # search's last step still runs waits for it instead of failing.
        self._running = TurnLock()
        # (pipeline, call shapes, precision) already run in this process: their kernels are loaded and warm.
        self._warmed: set[tuple[int, tuple[Any, ...], str]] = set()
        self._one_plan: Schedule | None = None  # every call placed for this schedule (a search: see one_plan)
        self.split = 1  # processes each denoiser is split over (see split_over)
        self.mirror: CallMirror | None = None  # an app split over processes: the first tells the others

    def split_over(self, processes: int, mirror: bool = False) -> None:
        """Joins a ``torchrun`` launch of ``processes`` (one a GPU); every pipeline this engine loads is then
        split over them (context parallelism). With ``mirror`` (an app) the first process leads: the others
        run ``split_app.follow``; without (a command) every process runs the same program."""
        from tmpdiff.pipelines.context_parallel import CallMirror, init_process_group

        _, world = init_process_group()
        if world != processes:
            raise ValueError(f"--parallel {processes} was started with {world} processes: pass --parallel "
                             f"{processes} and let tmpdiff start them")
        self.split = processes
        self.mirror = CallMirror() if mirror else None

    def close(self) -> None:
        """Lets go of every loaded pipeline, its variants, placer and streamed blocks, and hands the GPU memory and
        pinned host memory they held back (the app switching models, a benchmark measuring one setting after
        another). The engine stays usable: the next image loads its model again."""
        with self._lock:
            self._models.clear()
            self._warmed.clear()
        _collect_dropped_pipelines(self.device)

    @contextmanager
    def one_plan(self, schedule: Schedule | None) -> Iterator[None]:
        """Every call inside is placed for ``schedule`` (None: each for its own), so a search's evaluations run
        under one placement: nothing moves between them, and the step costs it plans with hold for every schedule
        it compares. Without a budget it changes nothing."""
        before, self._one_plan = self._one_plan, schedule
        try:
            yield
        finally:
            self._one_plan = before

    def set_gpu_memory(self, gpu_memory: float | None) -> None:
        """A new budget for this engine's next calls (GiB; None: all of the GPU), planned for at the next call: a
        benchmark measures several budgets in one process."""
        self.budget = resolve_budget(gpu_memory, self.device)
        for loaded in self._models.values():
            if loaded.placer is not None:
                loaded.placer.set_budget(self.budget.bytes)

    def set_host_memory(self, host_memory: float | None) -> None:
        """A new host memory budget (GiB; None: what the system has available), planned for at the next call."""
        self.host_budget = resolve_host_memory(host_memory)
        for loaded in self._models.values():
            if loaded.placer is not None:
                loaded.placer.set_host(self.host_budget)

    @property
    def leads(self) -> bool:
        """Whether this process speaks for its group: always, unless it is a later process of a split image."""
        if self.split <= 1:
            return True
        from tmpdiff.pipelines.context_parallel import is_main_process

        return is_main_process()

    def pipeline(self, model: str) -> Any:
        with self._lock:
            if model not in self._models:
                if (listener := _LOADING.get()) is not None:
                    listener(model)
                if self.device.startswith("cuda"):  # what engines dropped without ``close`` still hold
                    _collect_dropped_pipelines(self.device)
                with told_to_followers(self.mirror, {"load": model}):
                    start = time.perf_counter()
                    placed = self.budget.bytes is not None and self.split == 1
                    pipe = load_pipeline(model, self.device, host=placed, cache_dir=self.compile_cache.root.parent)
                    placer = Placer(pipe, torch.device(self.device), self.budget.bytes,
                                    host=self.host_budget) if placed else None
                    if self.split > 1:
                        from tmpdiff.pipelines.context_parallel import enable_context_parallel

                        try:
                            enable_context_parallel(pipe, self.split)
                        except ValueError as exc:
                            raise ValueError(f"model {model!r}: {exc}") from None
                    self.adopt(model, pipe, placer, time.perf_counter() - start)
            return self._models[model].pipe

    def adopt(self, model: str, pipe: Any, placer: Placer | None = None, load_seconds: float = 0.0) -> LoadedModel:
        """Makes ``pipe`` this engine's pipeline of ``model`` (``pipeline`` does, once loaded; a test or a
        benchmark may hand one in)."""
        self._models[model] = LoadedModel(model, pipe, placer, load_seconds)
        return self._models[model]

    def loaded(self, model: str) -> Any:
        """The pipeline of ``model`` already loaded in this engine."""
        return self._models[model].pipe

    def placer(self, model: str) -> Placer | None:
        """The placer of ``model`` loaded in this engine (None: not loaded, or placed without one)."""
        return self._models[model].placer if model in self._models else None

    def load_seconds(self, model: str) -> float:
        """How long ``model``'s weights took to load or build in this engine (0: not loaded here)."""
        return self._models[model].load_seconds if model in self._models else 0.0

    def _loaded_as(self, pipe: Any) -> LoadedModel | None:
        return next((loaded for loaded in self._models.values() if loaded.pipe is pipe), None)

    def check_schedule(self, schedule: Schedule | str, settings: RunSettings) -> Schedule:
        """The schedule, validated against the settings' steps and this device."""
        schedule = Schedule.coerce(schedule, settings.resolved_steps)
        for name in schedule.precisions:
            status = precision_status(name, self.device)
            if status.status is Status.UNAVAILABLE:
                raise ValueError(f"precision {name!r} is unavailable on {self.device}: {status.reason}")
        return schedule

    def generate(self, settings: RunSettings, schedule: Schedule | str | None = None,
                 replay: ReplayStore | None = None, replay_key: str | None = None) -> Result:
        """One image. With ``replay``, denoiser outputs of schedule prefixes already run for the same
        setting (``replay_key``) are replayed, bit for bit; replayed steps count with the time they took
        when they were computed."""
        schedule = Schedule.coerce(schedule or settings.reference_schedule())  # checked where it entered
        call = self._warm_timed_call(self.pipeline(settings.model), lambda: settings.call_kwargs(self.device),
                                     schedule, replay, replay_key)
        return Result(image=call.images[0], schedule=schedule, settings=settings, steps_run=call.handle.steps_run,
                      step_seconds=call.handle.step_seconds, seconds=call.seconds, device=device_name(self.device),
                      simulated=self._simulated(schedule), vae_seconds=call.vae_seconds, memory=call.memory)

    def generate_batch(self, settings: list[RunSettings], schedule: Schedule | str,
                       replay: ReplayStore | None = None, replay_key: str | None = None) -> list[Result]:
        """One pipeline call for several settings that differ only in prompt and seed (lists of prompts and
        generators; each image starts from the noise of its own seed). Each result's seconds are the batch's
        split evenly: throughput, not the latency of one image."""
        schedule = Schedule.coerce(schedule)  # checked where it entered
        call = self._warm_timed_call(self.pipeline(settings[0].model),
                                     lambda: batch_call_kwargs(settings, self.device), schedule, replay, replay_key)
        n = len(settings)
        return [Result(image=image, schedule=schedule, settings=item, steps_run=call.handle.steps_run,
                       step_seconds=[t / n for t in call.handle.step_seconds], seconds=call.seconds / n,
                       device=device_name(self.device), simulated=self._simulated(schedule),
                       vae_seconds=call.vae_seconds / n, memory=call.memory)
                for image, item in zip(call.images, settings, strict=True)]

    def warm(self, settings: RunSettings, precision: str) -> list[BuildInfo]:
        """Builds (and compiles, through the compile cache) ``precision``'s variant for ``settings``'
        shapes with one short run; returns what was built (nothing when it was resident already)."""
        schedule = Schedule.uniform(precision, settings.resolved_steps)
        call = self._timed_call(self.pipeline(settings.model), settings.call_kwargs(self.device), schedule)
        return call.handle.builds

    def _warm_timed_call(self, pipe: Any, make_kwargs: Callable[[], dict[str, Any]], schedule: Schedule,
                         replay: ReplayStore | None, replay_key: str | None) -> TimedCall:
        """One timed call. Time spent building variants during it (a cast or a quantization, or compiled
        graphs loaded from the compile cache) is left out of its seconds, as it is of its step times. On CUDA,
        precisions not yet run in this process at these shapes first run in a two-step call (its variants built
        or loaded, their kernels and the encoders' and VAE's started), so a first image is timed as warm as the
        next. Only when a variant was compiled afresh is a second, warm call timed (computed afresh:
        ``make_kwargs`` gives fresh seeded generators), since a first compiled run pays more than its build."""
        if self.device.startswith("cuda"):
            self._warm_up(pipe, make_kwargs(), schedule)
        call = self._timed_call(pipe, make_kwargs(), schedule, replay, replay_key)
        if any(b.mode is not Mode.EAGER and not b.from_cache for b in call.handle.builds):
            self.set_up.repeated_calls += _beyond_builds(call)
            return self._timed_call(pipe, make_kwargs(), schedule)
        return call._replace(seconds=_beyond_builds(call))

    def _warm_up(self, pipe: Any, kwargs: dict[str, Any], schedule: Schedule) -> None:
        """Runs the schedule's precisions that are cold at these shapes for one step each (untimed)."""
        shapes = tuple(sorted((k, v if isinstance(v, int | float | str | None) else len(v))
                              for k, v in kwargs.items() if k in ("height", "width", "prompt", "class_labels")))
        cold = [name for name in dict.fromkeys(schedule.precisions) if computes(name)
                and (id(pipe), shapes, name) not in self._warmed]
        if not cold:
            return
        warm_up = Schedule(tuple(cold) if len(cold) > 1 else (cold[0], cold[0]))
        call = self._timed_call(pipe, {**kwargs, "num_inference_steps": len(warm_up)}, warm_up, counted_as="warm_up",
                                plan_for=schedule)  # placed as the schedule it warms up for: nothing moves after
        self.set_up.warm_up_calls += _beyond_builds(call)
        self._warmed.update((id(pipe), shapes, name) for name in cold)

    def _simulated(self, schedule: Schedule) -> list[str]:
        return [n for n in schedule.precisions if precision_status(n, self.device).status is Status.SIMULATED]

    def _timed_call(self, pipe: Any, kwargs: dict[str, Any], schedule: Schedule, replay: ReplayStore | None = None,
                    replay_key: str | None = None, counted_as: str = "denoiser",
                    plan_for: Schedule | None = None) -> TimedCall:
        with self._running:
            return self.call_now(pipe, kwargs, schedule, replay, replay_key, counted_as, plan_for)

    def call_now(self, pipe: Any, kwargs: dict[str, Any], schedule: Schedule, replay: ReplayStore | None = None,
                 replay_key: str | None = None, counted_as: str = "denoiser",
                 plan_for: Schedule | None = None) -> TimedCall:
        """One pipeline call; its denoiser calls are counted in ``calls[counted_as]`` (warm-ups apart). Its parts
        are placed for ``plan_for`` (default: ``schedule``; a warm-up call: the schedule it warms up for)."""
        if self.mirror is not None:  # a split app: every process makes this call, and stops at the same step
            from tmpdiff.pipelines.context_parallel import encode_call_kwargs
            from tmpdiff.steps.cancel import agreeing

            model = self._loaded_as(pipe).name  # type: ignore[union-attr]  # a split app calls its own pipelines
            message = {"call": model, "kwargs": encode_call_kwargs(kwargs), "schedule": str(schedule),
                       "counted_as": counted_as}
            # No replay: a hit in one process would skip the exchanges the others make.
            with told_to_followers(self.mirror, message), agreeing(self.mirror.any_stops):
                return self._call_pipeline(pipe, kwargs, schedule, None, None, counted_as)
        return self._call_pipeline(pipe, kwargs, schedule, replay, replay_key, counted_as, plan_for)

    def _call_pipeline(self, pipe: Any, kwargs: dict[str, Any], schedule: Schedule, replay: ReplayStore | None,
                       replay_key: str | None, counted_as: str, plan_for: Schedule | None = None) -> TimedCall:
        placer, plan = self._placed(pipe, kwargs, self._one_plan or plan_for or schedule)
        prompts = keeping_prompts(pipe) if placer is not None else None
        start = time.perf_counter()
        try:
            with measuring_peak(self.device) as meter, torch.no_grad(), \
                    apply_schedule(pipe, schedule, compile=self.mode, cache=self.compile_cache,
                                   on_build=_LISTENER.get(), replay=replay, replay_key=replay_key,
                                   eager=placer.streamed_precisions() if placer else ()) as handle, \
                    timing_vae_decode(pipe, self.device) as vae:
                images = _pictures(pipe(**kwargs))
        except torch.OutOfMemoryError:
            raise self._out_of_memory(kwargs, schedule, placer) from None
        seconds = time.perf_counter() - start + handle.replay_correction + (prompts.take_credit() if prompts else 0.0)
        self.set_up.note(handle)
        for name, count in ((counted_as, handle.denoiser_calls), ("replayed", handle.replayed_calls),
                            ("skipped", handle.skipped_calls)):
            self.calls[name] += count
        peak = meter.peak()
        if placer is not None and peak is not None:
            placer.observed(peak, building=bool(handle.builds))
        memory = MemoryFigures(peak, meter.where, placer.resident_by_part() if placer else {},
                               placer.plan.line() if placer and placer.plan else "", self.budget.bytes,
                               meter.host_peak(), placer.pinned_bytes() if placer else 0)
        return TimedCall(images, handle, seconds, vae["seconds"], memory)

    def _placed(self, pipe: Any, kwargs: dict[str, Any], schedule: Schedule) -> tuple[Placer | None, Plan | None]:
        """The pipeline's parts placed for ``schedule`` within the budget (a placement plan made, or kept)."""
        loaded = self._loaded_as(pipe)
        placer = loaded.placer if loaded is not None else None
        if loaded is None or placer is None:
            return None, None
        before, start = placer.plan, time.perf_counter()
        working = estimate_working(pipe, int(kwargs.get("height") or 64), int(kwargs.get("num_frames") or 0))
        plan = placer.prepare(schedule.steps, working)  # every step: a part is read once per step it runs
        self.set_up.placement += time.perf_counter() - start
        self.set_up.plans += plan is not before
        told = _PLANS.get()
        if told is not None and (before is None or plan.line() != before.line()):
            told(loaded.name, plan.line())
        return placer, plan

    def _out_of_memory(self, kwargs: dict[str, Any], schedule: Schedule, placer: Placer | None) -> OutOfMemory:
        """Running out of memory is an answer: what was taken is freed, the next plan leaves more working room."""
        if placer is not None:
            placer.ran_out()
        torch.cuda.empty_cache()
        size = kwargs.get("height")
        what = f"a {size}x{size} image with {schedule}" if size else f"an image with {schedule}"
        return OutOfMemory(what, self.budget.bytes, placer.plan.line() if placer and placer.plan else "")


def _beyond_builds(call: TimedCall) -> float:
    """A call's seconds beyond the variants built and the graphs captured in it."""
    return max(call.seconds - sum(call.handle.build_seconds.values()), 0.0)


def _pictures(output: Any) -> list[Image.Image]:
    """Each image of a pipeline's output; each video (``frames``) as one frame sheet, its frames side by side."""
    from tmpdiff.engine.frames import frame_sheet

    if getattr(output, "frames", None) is not None:
        return [frame_sheet(video) for video in output.frames]
    return list(output.images)


def _usable_device(device: str) -> str:
    """``device`` when this machine has it; a ``FieldError`` naming what it has otherwise (not a driver's
    traceback from deep inside the first CUDA call)."""
    kind = torch.device(device)
    if kind.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FieldError("device", device, "{device} {value}: this machine has no CUDA GPU (or no driver for "
                             "it); use cpu")
        if kind.index is not None and kind.index >= count:
            raise FieldError("device", device, f"{{device}} {{value}}: this machine has {count} CUDA GPU(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return device
