"""One image from one setting: the call every front end (CLI, search, app) shares."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from .compile_cache import CompileCache
from .limits import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_SIZE, MAX_STEPS, MIN_SIZE, finite
from .models import DEFAULT_MODEL, ModelSpec, get_model, load_pipeline
from .precisions import PRECISIONS, Status, available_precisions, computes, precision_status
from .replay import ReplayStore
from .schedule import Schedule
from .switch import apply_schedule
from .variants import BuildInfo, Mode

if TYPE_CHECKING:
    from .parallel import CallMirror

__all__ = ["Engine", "Result", "RunSettings", "choose_compile", "default_device", "describe_build", "device_name",
           "telling_builds_to"]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


@dataclass(frozen=True)
class RunSettings:
    """Everything but the schedule that decides an image; validated up front."""

    model: str = DEFAULT_MODEL
    prompt: str | None = None
    negative_prompt: str = ""
    seed: int = 0
    steps: int | None = None
    size: int | None = None
    guidance: float | None = None

    def __post_init__(self) -> None:
        get_model(self.model)  # an unknown model fails first, naming the choices
        for name in ("steps", "seed", "size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        if self.steps is not None and self.steps <= 0:
            raise ValueError(f"steps must be a positive number, got {self.steps}")
        if self.steps is not None and self.steps > MAX_STEPS:
            raise ValueError(f"steps must be at most {MAX_STEPS}, got {self.steps}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be from 0 to {MAX_SEED} (2**63 - 1), got {self.seed}")
        if self.size is not None and not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be from {MIN_SIZE} to {MAX_SIZE} pixels, got {self.size}")
        if self.guidance is not None and not 0 <= finite(self.guidance, "guidance") <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be from 0 to {MAX_GUIDANCE:g}, got {self.guidance}")
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name) or ""
            if len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"{name} has {len(text)} characters: at most {MAX_PROMPT_CHARS}")
        self.call_kwargs()

    def call_kwargs(self, device: str | torch.device = "cpu") -> dict[str, Any]:
        """This setting as its pipeline's arguments, with a fresh seeded generator each call."""
        return self.spec.call_kwargs(self.resolved_prompt, steps=self.resolved_steps, seed=self.seed,
                                     size=self.size, guidance=self.guidance, negative_prompt=self.negative_prompt,
                                     device=device)

    @property
    def spec(self) -> ModelSpec:
        return get_model(self.model)

    @property
    def resolved_prompt(self) -> str:
        return self.spec.example_prompt if self.prompt in (None, "") else str(self.prompt)

    @property
    def resolved_steps(self) -> int:
        return self.spec.steps if self.steps is None else self.steps

    @property
    def resolved_size(self) -> int:
        return self.spec.size if self.size is None else self.size

    @property
    def resolved_guidance(self) -> float:
        return self.spec.guidance if self.guidance is None else self.guidance

    @property
    def batch_key(self) -> tuple[str, int, int, float, str]:
        """Everything but prompt and seed: settings with the same key can share one pipeline call."""
        return self.model, self.resolved_steps, self.resolved_size, self.resolved_guidance, self.negative_prompt

    def reference_schedule(self) -> Schedule:
        return Schedule.uniform(self.spec.dtype, self.resolved_steps)

    def to_dict(self) -> dict[str, Any]:
        settings = {"model": self.model, "prompt": self.resolved_prompt, "negative_prompt": self.negative_prompt,
                    "seed": self.seed, "steps": self.resolved_steps, "size": self.resolved_size,
                    "guidance": self.resolved_guidance}
        if self.spec.frames:  # a video's frame count is part of its setting (images keep their stored keys)
            settings["frames"] = self.spec.frames
        return settings


@dataclass
class Result:
    image: Image.Image
    schedule: Schedule
    settings: RunSettings
    steps_run: list[str]
    step_seconds: list[float]
    seconds: float
    device: str
    simulated: list[str] = field(default_factory=list)
    vae_seconds: float | None = None


BuildListener = Callable[[str, Mode, float | None], None]
TimedCall = tuple[list[Image.Image], Any, float, float]  # images, the schedule's handle, seconds, VAE seconds
_LISTENER: ContextVar[BuildListener | None] = ContextVar("tmpdiff_build_listener", default=None)


@contextmanager
def telling_builds_to(listener: BuildListener) -> Iterator[None]:
    """Within the block, in this thread only, ``listener`` hears of every variant being built (a per-call
    option: two users' requests never swap each other's progress bars on the shared engine)."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class Engine:
    """Loads pipelines once per (model, device) and runs schedules on them.

    Args:
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        compile: ``True`` (torch.compile), ``"aot"`` (ahead-of-time packages), ``False`` (eager), or
            None: compiled on CUDA, eager elsewhere.
        cache_dir: the tmpdiff cache folder that keeps compiled variants across processes
            (default: ``$TMPDIFF_CACHE_DIR`` or the user cache folder).
    """

    def __init__(self, device: str | None = None, compile: bool | str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.device = device or default_device()
        self.mode = Mode.coerce(compile, torch.device(self.device))
        self.compile_cache = CompileCache(cache_dir)
        self.on_build: BuildListener | None = None  # the process's default listener (the CLI's); see telling_builds_to
        # Denoiser calls over every run of this engine: made, answered by replay, saved by `skip`.
        # Warm-up calls (see _warm_up) are counted apart, in "warm_up".
        self.calls: dict[str, int] = {"denoiser": 0, "replayed": 0, "skipped": 0, "warm_up": 0}
        self._pipes: dict[str, Any] = {}
        self.load_seconds: dict[str, float] = {}  # how long each model's weights took to load (or build)
        self._lock = threading.Lock()
        # One pipeline call at a time, in the order they were asked for: a quick image asked for during a long
        # search waits for the search's current image only, and a request that comes while a cancelled
        # search's last step still runs waits for it instead of failing.
        self._running = TurnLock()
        # (pipeline, call shapes, precision) already run in this process: their kernels are loaded and warm.
        self._warmed: set[tuple[int, tuple[Any, ...], str]] = set()
        self.split = 1  # processes each denoiser is split over (see split_over)
        self.mirror: CallMirror | None = None  # an app split over processes: the first tells the others

    def split_over(self, processes: int, mirror: bool = False) -> None:
        """Joins a ``torchrun`` launch of ``processes`` (one a GPU); every pipeline this engine loads is then
        split over them (context parallelism). With ``mirror`` (an app) the first process leads: the others
        run :meth:`follow`; without (a command) every process runs the same program."""
        from .parallel import CallMirror, init_process_group

        _, world = init_process_group()
        if world != processes:
            raise ValueError(f"--parallel {processes} was started with {world} processes: pass --parallel "
                             f"{processes} and let tmpdiff start them")
        self.split = processes
        self.mirror = CallMirror() if mirror else None

    def pipeline(self, model: str) -> Any:
        with self._lock:
            if model not in self._pipes:
                with self._told_to_followers({"load": model}):
                    start = time.perf_counter()
                    pipe = load_pipeline(model, self.device)
                    if self.split > 1:
                        from .parallel import enable_context_parallel

                        try:
                            enable_context_parallel(pipe, self.split)
                        except ValueError as exc:
                            raise ValueError(f"model {model!r}: {exc}") from None
                    self._pipes[model] = pipe
                    self.load_seconds[model] = time.perf_counter() - start
            return self._pipes[model]

    def follow(self) -> None:
        """In the other processes of a split app: loads and calls as the first process says, until it says
        stop. A load or call that fails or is cancelled here failed or was cancelled there too (same inputs,
        same agreed stop), and the first process tells its user: the next message is awaited."""
        from .cancel import Cancelled
        from .parallel import decode_call_kwargs

        assert self.mirror is not None and not self.mirror.leads, "only the other processes of a split app follow"
        while "stop" not in (message := self.mirror.next_message()):
            try:
                if "load" in message:
                    self.pipeline(message["load"])
                else:
                    self._timed_call_now(self._pipes[message["call"]], decode_call_kwargs(message["kwargs"]),
                                         Schedule.parse(message["schedule"]), None, None, message["counted_as"])
            except Cancelled:
                pass
            except ValueError:
                pass  # a user's mistake: the first process tells the user
            except Exception as exc:  # noqa: BLE001 (kept serving: the first process reports its own failure)
                print(f"warning: process {self.mirror.rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        from .parallel import leave_process_group

        leave_process_group()

    def release_followers(self) -> None:
        """In the first process of a split app, as it ends: the others return from :meth:`follow`; then this
        process leaves the group (as each follower does when it returns)."""
        if self.mirror is not None and self.mirror.leads:
            from .parallel import leave_process_group

            with self.mirror.lock:
                self.mirror.announce({"stop": True})
            leave_process_group()

    @contextmanager
    def _told_to_followers(self, message: dict[str, Any]) -> Iterator[None]:
        """In the first process of a split app: the other processes are told ``message`` and the block runs
        before anything else is told (they act on messages in order)."""
        if self.mirror is None or not self.mirror.leads:
            yield
            return
        with self.mirror.lock:
            self.mirror.announce(message)
            yield

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
        schedule = self.check_schedule(schedule or settings.reference_schedule(), settings)
        images, handle, seconds, vae_seconds = self._warm_timed_call(
            self.pipeline(settings.model), lambda: settings.call_kwargs(self.device), schedule, replay, replay_key)
        return Result(image=images[0], schedule=schedule, settings=settings, steps_run=handle.steps_run,
                      step_seconds=handle.step_seconds, seconds=seconds, device=device_name(self.device),
                      simulated=self._simulated(schedule), vae_seconds=vae_seconds)

    def generate_batch(self, settings: list[RunSettings], schedule: Schedule | str,
                       replay: ReplayStore | None = None, replay_key: str | None = None) -> list[Result]:
        """One pipeline call for several settings that differ only in prompt and seed (lists of prompts and
        generators; each image starts from the noise of its own seed). Each result's seconds are the batch's
        split evenly: throughput, not the latency of one image."""
        schedule = self.check_schedule(schedule, settings[0])
        images, handle, seconds, vae_seconds = self._warm_timed_call(
            self.pipeline(settings[0].model), lambda: batch_call_kwargs(settings, self.device), schedule, replay,
            replay_key)
        n = len(settings)
        return [Result(image=image, schedule=schedule, settings=item, steps_run=handle.steps_run,
                       step_seconds=[t / n for t in handle.step_seconds], seconds=seconds / n,
                       device=device_name(self.device), simulated=self._simulated(schedule),
                       vae_seconds=vae_seconds / n)
                for image, item in zip(images, settings, strict=True)]

    def warm(self, settings: RunSettings, precision: str) -> list[BuildInfo]:
        """Builds (and compiles, through the compile cache) ``precision``'s variant for ``settings``'
        shapes with one short run; returns what was built (nothing when it was resident already)."""
        schedule = self.check_schedule(Schedule.uniform(precision, settings.resolved_steps), settings)
        _, handle, _, _ = self._timed_call(self.pipeline(settings.model), settings.call_kwargs(self.device), schedule)
        return handle.builds

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
        images, handle, seconds, vae_seconds = self._timed_call(pipe, make_kwargs(), schedule, replay, replay_key)
        if any(b.mode is not Mode.EAGER and not b.from_cache for b in handle.builds):
            return self._timed_call(pipe, make_kwargs(), schedule)
        return images, handle, max(seconds - sum(handle.build_seconds.values()), 0.0), vae_seconds

    def _warm_up(self, pipe: Any, kwargs: dict[str, Any], schedule: Schedule) -> None:
        """Runs the schedule's precisions that are cold at these shapes for one step each (untimed)."""
        shapes = tuple(sorted((k, v if isinstance(v, int | float | str | None) else len(v))
                              for k, v in kwargs.items() if k in ("height", "width", "prompt", "class_labels")))
        cold = [name for name in dict.fromkeys(schedule.precisions) if computes(name)
                and (id(pipe), shapes, name) not in self._warmed]
        if not cold:
            return
        warm_up = Schedule(tuple(cold) if len(cold) > 1 else (cold[0], cold[0]))
        self._timed_call(pipe, {**kwargs, "num_inference_steps": len(warm_up)}, warm_up, counted_as="warm_up")
        self._warmed.update((id(pipe), shapes, name) for name in cold)

    def _simulated(self, schedule: Schedule) -> list[str]:
        return [n for n in schedule.precisions if precision_status(n, self.device).status is Status.SIMULATED]

    def _timed_call(self, pipe: Any, kwargs: dict[str, Any], schedule: Schedule, replay: ReplayStore | None = None,
                    replay_key: str | None = None, counted_as: str = "denoiser") -> TimedCall:
        with self._running:
            return self._timed_call_now(pipe, kwargs, schedule, replay, replay_key, counted_as)

    def _timed_call_now(self, pipe: Any, kwargs: dict[str, Any], schedule: Schedule, replay: ReplayStore | None,
                        replay_key: str | None, counted_as: str = "denoiser") -> TimedCall:
        """One pipeline call; its denoiser calls are counted in ``calls[counted_as]`` (warm-ups apart)."""
        if self.mirror is not None:  # a split app: every process makes this call, and stops at the same step
            from .cancel import agreeing
            from .parallel import encode_call_kwargs

            model = next(name for name, loaded in self._pipes.items() if loaded is pipe)
            message = {"call": model, "kwargs": encode_call_kwargs(kwargs), "schedule": str(schedule),
                       "counted_as": counted_as}
            # No replay: a hit in one process would skip the exchanges the others make.
            with self._told_to_followers(message), agreeing(self.mirror.any_stops):
                return self._call_pipeline(pipe, kwargs, schedule, None, None, counted_as)
        return self._call_pipeline(pipe, kwargs, schedule, replay, replay_key, counted_as)

    def _call_pipeline(self, pipe: Any, kwargs: dict[str, Any], schedule: Schedule, replay: ReplayStore | None,
                       replay_key: str | None, counted_as: str) -> TimedCall:
        start = time.perf_counter()
        with torch.no_grad(), apply_schedule(pipe, schedule, compile=self.mode, cache=self.compile_cache,
                                             on_build=_LISTENER.get() or self.on_build, replay=replay,
                                             replay_key=replay_key) as handle, \
                _timing_vae_decode(pipe, self.device) as vae:
            images = _pictures(pipe(**kwargs))
        seconds = time.perf_counter() - start + handle.replay_correction
        for name, count in ((counted_as, handle.denoiser_calls), ("replayed", handle.replayed_calls),
                            ("skipped", handle.skipped_calls)):
            self.calls[name] += count
        return images, handle, seconds, vae["seconds"]


_BACKGROUND: ContextVar[bool] = ContextVar("tmpdiff_background", default=False)


@contextmanager
def in_background() -> Iterator[None]:
    """Pipeline calls made in the block (a search's) wait behind people's single images (see ``TurnLock``)."""
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


_PARTY: ContextVar[str | None] = ContextVar("tmpdiff_party", default=None)
FORGET_AFTER_GRANTS = 1024  # a party's last turn is kept this many turns (see TurnLock._forget_long_served)


@contextmanager
def as_party(party: str | None) -> Iterator[None]:
    """Turns asked in the block are one party's (a browser session's): see ``TurnLock``."""
    token = _PARTY.set(party)
    try:
        yield
    finally:
        _PARTY.reset(token)


class TurnLock:
    """A lock taken in turn: in the order asked for (``threading.Lock`` lets a thread that releases and asks
    again cut in line, so a search could starve everyone's images), except that

    - a background call (a search's, see ``in_background``) lets waiting single images go first, at most
      ``yield_turns`` times, so it is never starved either;
    - among waiting images of several parties (``as_party``: browser sessions), the party served longest ago
      goes first, so one user's queued images do not hold up another's one image; a party's own turns, and
      calls of no party, keep the order asked.

    Re-entrant for the thread that holds it."""

    def __init__(self, yield_turns: int = 4) -> None:
        self.yield_turns = yield_turns
        self._changed = threading.Condition()
        self._next_ticket = 0
        self._waiting: dict[int, tuple[bool, str | None]] = {}  # ticket -> (background, party)
        self._given_up: dict[int, int] = {}  # background ticket -> turns it let images take
        self._served: dict[str, int] = {}  # party -> the grant that last served it
        self._grants = 0
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> TurnLock:
        me = threading.get_ident()
        with self._changed:
            if self._owner == me:
                self._depth += 1
                return self
            ticket = self._next_ticket
            self._next_ticket += 1
            self._waiting[ticket] = (_BACKGROUND.get(), _PARTY.get())
            self._changed.wait_for(lambda: self._owner is None and self._next_up() == ticket)
            _, party = self._waiting.pop(ticket)
            self._given_up.pop(ticket, None)
            for other, (background, _) in self._waiting.items():  # a background call asked earlier gave up its turn
                if background and other < ticket:
                    self._given_up[other] = self._given_up.get(other, 0) + 1
            self._grants += 1
            if party is not None:
                self._served[party] = self._grants
            if len(self._served) > 2 * FORGET_AFTER_GRANTS:  # a long-lived app meets endless sessions
                self._forget_long_served()
            self._owner, self._depth = me, 1
        return self

    @property
    def taken(self) -> bool:
        """Whether someone holds the lock or waits for it (a newcomer would wait)."""
        with self._changed:
            return self._owner is not None or bool(self._waiting)

    def _next_up(self) -> int:
        """The first ticket asked, unless images wait: then the image of the party served longest ago (a
        background call first asked goes after them until it has given up its turns)."""
        first = min(self._waiting)
        images = [t for t, (background, _) in self._waiting.items() if not background]
        first_is_background = self._waiting[first][0]
        if not images or (first_is_background and self._given_up.get(first, 0) >= self.yield_turns):
            return first
        return min(images, key=self._fair_order)

    def _forget_long_served(self) -> None:
        """Drops parties not served in the last ``FORGET_AFTER_GRANTS`` grants: all such would go before every
        party still remembered anyway, as one never served does."""
        horizon = self._grants - FORGET_AFTER_GRANTS
        self._served = {party: grant for party, grant in self._served.items() if grant > horizon}

    def _fair_order(self, ticket: int) -> tuple[int, int]:
        party = self._waiting[ticket][1]
        return (self._served.get(party, 0) if party is not None else 0, ticket)

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._changed.notify_all()


def _pictures(output: Any) -> list[Image.Image]:
    """Each image of a pipeline's output; each video (``frames``) as one frame sheet, its frames side by side."""
    from .metrics import frame_sheet

    if getattr(output, "frames", None) is not None:
        return [frame_sheet(video) for video in output.frames]
    return list(output.images)


def batch_call_kwargs(settings: list[RunSettings], device: str | torch.device) -> dict[str, Any]:
    """One pipeline call's arguments for settings that differ only in prompt and seed."""
    if len({s.batch_key for s in settings}) > 1:
        raise ValueError("a batch takes settings that differ only in prompt and seed; got several models, step "
                         "counts, sizes, guidance scales or negative prompts")
    each = [s.call_kwargs(device) for s in settings]
    kwargs = dict(each[0], generator=[k["generator"] for k in each])
    if "class_labels" in kwargs:
        kwargs["class_labels"] = [label for k in each for label in k["class_labels"]]
    else:
        kwargs["prompt"] = [k["prompt"] for k in each]
    return kwargs


@contextmanager
def _timing_vae_decode(pipe: Any, device: str) -> Iterator[dict[str, float]]:
    """Times the pipeline's VAE decoding apart from the rest (restored on exit)."""
    timing = {"seconds": 0.0}
    vae = getattr(pipe, "vae", None)
    if vae is None:
        yield timing
        return
    own = vae.__dict__.get("decode")
    original = vae.decode
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def decode(*args: Any, **kwargs: Any) -> Any:
        sync()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        sync()
        timing["seconds"] += time.perf_counter() - start
        return out

    vae.decode = decode
    try:
        yield timing
    finally:
        if own is None:
            del vae.decode
        else:
            vae.decode = own


def choose_compile(compile_flag: bool | None, aot: bool | None) -> bool | str | None:
    """The engine's ``compile`` from a front end's ``--compile``/``--no-compile`` and ``--aot``.

    On a ZeroGPU Space, where each call may run in a new process on another GPU, just-in-time
    compilation is off unless asked for; ``--aot`` builds packages once and loads them in every process.
    """
    if aot:
        return "aot"
    if compile_flag is None and os.environ.get("SPACES_ZERO_GPU"):
        return False
    return compile_flag


def describe_build(precision: str, mode: Mode, expected: float | None) -> str:
    """What a front end says while a variant is being built."""
    if mode is Mode.EAGER:
        return f"preparing {precision} weights"
    what = "compiling" if mode is Mode.COMPILED else "compiling ahead of time"
    if expected is None:
        return f"{what} {precision} for this model (first time only; later runs load it from the cache)"
    return f"{what} {precision} for this model (first time only, ~{expected:.0f} s)"


def precision_table(device: str) -> list[dict[str, str]]:
    return [{"name": a.name, "status": a.status.value, "description": PRECISIONS[a.name].description,
             "reason": a.reason} for a in available_precisions(device)]
