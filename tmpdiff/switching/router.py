"""Inside one ``apply_schedule`` block: which step the pipeline is in, which variant each denoiser call runs, what
the replay store answers, and how long each step took.

The ``StepRouter`` owns a block's state, split by job: the ``StepClock`` (step and call counters, the outputs
``skip`` and ``extrap`` reuse), the ``ReplayedCalls`` of the step, and the ``StepTimer`` (CUDA events at step
boundaries, build time left out).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.utils import BaseOutput
from torch import nn

from tmpdiff.steps.cancel import raise_if_cancelled
from tmpdiff.steps.precisions import Precision, get_precision
from tmpdiff.steps.replay import ReplayKey, ReplayStore
from tmpdiff.steps.schedule import Schedule
from tmpdiff.variants.bank import BuildInfo, Mode, VariantBank, record_linear_rows
from tmpdiff.variants.compile_cache import CompileCache

__all__ = ["DenoiserHook", "ScheduleHandle", "StepRouter", "SwitchConfig"]


@dataclass
class ScheduleHandle:
    """What one ``apply_schedule`` block ran.

    Attributes:
        schedule: the schedule applied.
        steps_run: the precision that actually ran at each step, one entry per step.
        step_seconds: wall time of each step (denoiser calls plus the scheduler update),
            excluding time spent building variants.
        calls_per_step: denoiser calls at each step (0 for ``skip``).
        variants: the resident variant modules used, by precision name.
        build_seconds: time spent building (and compiling) variants during this block.
        builds: how each variant built during this block was made (compiled, or loaded from the cache).
        capture_seconds: time spent capturing CUDA graphs during this block, by precision (within build_seconds).
        denoisers: the pipeline attributes whose calls were switched (``transformer``, ``transformer_2``, ...).
        denoiser_calls, replayed_calls, skipped_calls: the denoiser calls made, answered from the replay
            store instead, and saved by ``skip`` steps, over every pipeline call in the block.
        replayed_steps: per step, whether every call of it was replayed (its ``step_seconds`` entry is then
            the time measured when the step was computed, not the time of the replay).
        replay_correction: seconds to add to the wall time of the block's runs to stand for what the
            replayed steps cost when they were computed.
    """

    schedule: Schedule
    mode: Mode
    steps_run: list[str] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    calls_per_step: list[int] = field(default_factory=list)
    variants: dict[str, nn.Module] = field(default_factory=dict)
    build_seconds: dict[str, float] = field(default_factory=dict)
    builds: list[BuildInfo] = field(default_factory=list)
    capture_seconds: dict[str, float] = field(default_factory=dict)
    denoiser_calls: int = 0
    replayed_calls: int = 0
    skipped_calls: int = 0
    replayed_steps: list[bool] = field(default_factory=list)
    replay_correction: float = 0.0
    denoisers: list[str] = field(default_factory=list)
    _banks: list[VariantBank] = field(default_factory=list)

    @property
    def compiled(self) -> bool:
        """Whether variants run compiled (by torch.compile or ahead of time)."""
        return self.mode is not Mode.EAGER

    def memory_bytes(self) -> dict[str, int]:
        """Extra bytes of every resident variant, beyond the denoisers' own weights (summed over denoisers)."""
        total: dict[str, int] = {}
        for bank in self._banks:
            for name, size in bank.memory_bytes().items():
                total[name] = total.get(name, 0) + size
        return total


@dataclass(frozen=True)
class SwitchConfig:
    """What one ``apply_schedule`` block was asked for (fixed for the block)."""

    schedule: Schedule
    mode: Mode
    pipeline: str  # the pipeline class, for messages
    denoisers: tuple[str, ...]
    synchronize: bool  # time on the device's clock (CUDA events)
    cache: CompileCache | None = None
    on_build: Callable[[str, Mode, float | None], None] | None = None
    replay: ReplayStore | None = None
    replay_key: str | None = None
    scheduler: Any = None  # its timesteps place an extrapolated step
    cuda_graphs: bool = True
    eager: frozenset[str] = frozenset()  # precisions that run eager whatever ``mode`` says (streamed: placer.py)

    @functools.cached_property
    def precisions(self) -> tuple[Precision, ...]:
        """Each step's registry entry, looked up once for the block (not on every denoiser call)."""
        return tuple(get_precision(name) for name in self.schedule)


class DenoiserHook(ModelHook):
    """Attached to one denoiser: hands its calls, with its own variant bank and stock forward, to the
    step router every denoiser of the pipeline shares."""

    def __init__(self, router: StepRouter, bank: VariantBank) -> None:
        super().__init__()
        self.router, self.bank = router, bank

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.router.forward(self, module, args, kwargs)


class StepClock:
    """Which step the pipeline is in and which denoiser call of it this is; the outputs ``skip`` reuses."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A pipeline call starts."""
        self.step, self.calls = 0, 0
        self.outputs: list[Any] = []  # this step's call outputs
        self.last_outputs: list[Any] = []  # the last computed step's, for skip
        self.earlier_outputs: list[Any] = []  # the computed step's before it, for extrap
        self.computed: list[int] = []  # the steps that called the denoiser

    def next_call(self) -> int:
        self.calls += 1
        return self.calls - 1

    def end_step(self, computed: bool) -> None:
        if computed:
            self.earlier_outputs, self.last_outputs = self.last_outputs, self.outputs
            self.computed.append(self.step)
        self.outputs, self.calls = [], 0
        self.step += 1


class ReplayedCalls:
    """This step's calls answered from, or recorded into, the replay store."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.keys: list[ReplayKey] = []  # the keys this step recorded
        self.hits = 0
        self.seconds = 0.0  # the step time the hits were measured at when computed

    def end_step(self) -> tuple[list[ReplayKey], int, float]:
        done = self.keys, self.hits, self.seconds
        self.reset()
        return done


class StepTimer:
    """Marks at step boundaries (CUDA events, read once when the block ends, or wall time), build time
    left out, replayed steps counted at the time they took when computed."""

    def __init__(self, synchronize: bool) -> None:
        self.synchronize = synchronize
        # (start mark, end mark, seconds to exclude, replay keys recorded, seconds measured when replayed)
        self.pending: list[tuple[Any, Any, float, list[ReplayKey], float | None]] = []
        self.reset()

    def reset(self) -> None:
        self.step_start: Any = None
        self.excluded = 0.0

    def start(self) -> None:
        if self.step_start is None:
            self.step_start = self._mark()

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def end_step(self, keys: list[ReplayKey], replayed_seconds: float | None) -> None:
        now = self._mark()
        start = self.step_start if self.step_start is not None else now
        self.pending.append((start, now, self.excluded, keys, replayed_seconds))
        self.step_start, self.excluded = now, 0.0

    def resolve(self, handle: ScheduleHandle, replay: ReplayStore | None) -> None:
        """Turns the marks into ``handle.step_seconds`` (waits for the device once, not every step)."""
        for start, end, excluded, keys, replayed_seconds in self.pending:
            if self.synchronize:
                end.synchronize()
                seconds = start.elapsed_time(end) / 1000
            else:
                seconds = end - start
            seconds = max(seconds - excluded, 0.0)
            if replayed_seconds is not None:  # never the replay's own time: the step's when computed
                handle.replay_correction += replayed_seconds - seconds
                seconds = replayed_seconds
            elif keys and replay is not None:
                replay.set_seconds(keys, seconds)
            handle.step_seconds.append(seconds)
        self.pending = []

    def _mark(self) -> Any:
        if self.synchronize:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()


class StepRouter:
    """Routes each denoiser call to the variant of the current step, whichever denoiser makes it: the step
    clock says which step, the replay store may answer, the variant bank runs (building a variant the first
    time), the timer keeps the step's time."""

    def __init__(self, config: SwitchConfig, handle: ScheduleHandle) -> None:
        self.config, self.handle = config, handle
        self.clock, self.replayed, self.timer = StepClock(), ReplayedCalls(), StepTimer(config.synchronize)

    # --- the denoiser call -------------------------------------------------------------
    def forward(self, hook: DenoiserHook, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if self.clock.calls == 0:
            raise_if_cancelled()  # a cancelled search stops here, at a step boundary, and frees the pipeline
        schedule = self.config.schedule
        if self.clock.step >= len(schedule):
            raise ValueError(
                f"the pipeline ran more denoising steps than the schedule's {len(schedule)}: "
                f"pass num_inference_steps={len(schedule)} or a schedule of the pipeline's length"
            )
        self.timer.start()
        precision = self.config.precisions[self.clock.step]
        name = precision.name
        index = self.clock.next_call()
        if not precision.computes:
            if index >= len(self.clock.last_outputs):
                raise ValueError(f"step {self.clock.step} is {name!r} but no earlier step made call {index} to reuse")
            output = self._predicted(index) if precision.extrapolates else self.clock.last_outputs[index]
            self.handle.skipped_calls += 1
        else:
            output = self._replayed_or_run(hook, precision, index, module, args, kwargs)
        self.clock.outputs.append(output)
        return output

    def _predicted(self, index: int) -> Any:
        """Call ``index``'s output at this step, extrapolated in the timestep from the last two computed steps
        (their outputs a and b at timesteps t_a and t_b: a + (a - b) (t - t_a) / (t_a - t_b)); with one computed
        step so far, its output as it was."""
        clock = self.clock
        if len(clock.computed) < 2 or index >= len(clock.earlier_outputs):
            return clock.last_outputs[index]
        b, a, now = clock.computed[-2], clock.computed[-1], clock.step
        times = getattr(self.config.scheduler, "timesteps", None)
        if times is not None and len(times) > now and float(times[a] - times[b]) != 0.0:
            weight = float(times[now] - times[a]) / float(times[a] - times[b])
        else:  # no timesteps to read: evenly spaced steps
            weight = (now - a) / (a - b)
        return _extrapolated(clock.last_outputs[index], clock.earlier_outputs[index], weight)

    def _replayed_or_run(self, hook: DenoiserHook, precision: Precision, index: int, module: nn.Module,
                         args: tuple, kwargs: dict) -> Any:
        store = self.config.replay
        if store is None:
            self.handle.denoiser_calls += 1
            return self._run(hook, precision, module, args, kwargs)
        key: ReplayKey = (self.config.replay_key or "", self.config.schedule.steps[: self.clock.step + 1], index)
        hit = store.get(key)
        if hit is not None:
            self.replayed.hits += 1
            self.replayed.seconds += hit[1]
            self.handle.replayed_calls += 1
            return hit[0]
        self.handle.denoiser_calls += 1
        output = self._run(hook, precision, module, args, kwargs)
        store.put(key, output)
        self.replayed.keys.append(key)
        return output

    def _run(self, hook: DenoiserHook, precision: Precision, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        assert hook.fn_ref is not None
        bank, name = hook.bank, precision.name
        mode = Mode.EAGER if name in self.config.eager else self.config.mode
        reference_dtype, dtype = bank.reference_dtype, precision.dtype
        if dtype == reference_dtype and mode is Mode.EAGER:
            # The reference itself: exactly the stock forward.
            self.handle.variants.setdefault(name, module)
            if bank.linear_rows is None:  # which Linears run through their forward, and with how many rows:
                with record_linear_rows(bank.reference) as rows:  # recorded on a real step, not an extra call
                    output = hook.fn_ref.original_forward(*args, **kwargs)
                bank.linear_rows = rows
                return output
            return hook.fn_ref.original_forward(*args, **kwargs)
        cast = dtype is not None and dtype != reference_dtype
        if dtype is not None and cast:
            args, kwargs = _cast((args, kwargs), reference_dtype, dtype)
        variant = bank.get(name, mode)
        if variant is None:
            variant = self._build(hook, name, mode, args, kwargs)
        self.handle.variants.setdefault(name, variant)
        output, capturing = bank.call(name, mode, variant, args, kwargs, self.config.cuda_graphs)
        if capturing:  # a CUDA graph was captured in this call: set-up, like a build, not the step's time
            self.handle.build_seconds[name] = self.handle.build_seconds.get(name, 0.0) + capturing
            self.handle.capture_seconds[name] = self.handle.capture_seconds.get(name, 0.0) + capturing
            self.timer.exclude(capturing)
        return _cast(output, dtype, reference_dtype) if dtype is not None and cast else output

    def _build(self, hook: DenoiserHook, name: str, mode: Mode, args: tuple, kwargs: dict) -> nn.Module:
        assert hook.fn_ref is not None
        bank, cache, on_build = hook.bank, self.config.cache, self.config.on_build
        start = time.perf_counter()
        with bank.lock:
            if on_build is not None and bank.get(name, mode) is None:
                known = cache.previous_seconds(mode.value, name, bank.reference) \
                    if cache is not None and mode is not Mode.EAGER else None
                on_build(name, mode, known)
            if bank.needs_rows(name):  # torchao precisions: the call is in the reference dtype
                with record_linear_rows(bank.reference) as rows, torch.no_grad():
                    hook.fn_ref.original_forward(*args, **kwargs)
                bank.linear_rows = rows
            variant = bank.build(name, mode, example=(args, kwargs), cache=cache)
            info = bank.builds.get((name, mode))
        elapsed = time.perf_counter() - start
        self.handle.build_seconds[name] = elapsed
        if info is not None:
            self.handle.builds.append(info)
        self.timer.exclude(elapsed)
        return variant

    # --- the step boundary --------------------------------------------------------------
    def end_step(self) -> None:
        step, calls = self.clock.step, self.clock.calls
        schedule = self.config.schedule
        name = schedule[step] if step < len(schedule) else "?"
        computed = name != "?" and self.config.precisions[step].computes
        if computed and calls == 0:
            # Never report a step as run in a precision when no hooked denoiser was called in it.
            raise ValueError(
                f"step {step} of {self.config.pipeline} called none of the denoisers tmpdiff switched "
                f"({', '.join(self.config.denoisers)}), so its {name!r} never ran: the pipeline denoises with "
                "another module; name it with apply_schedule(..., denoiser='attribute')")
        keys, hits, replayed_seconds = self.replayed.end_step()
        replayed = computed and calls > 0 and hits == calls
        self.handle.steps_run.append(name)
        self.handle.calls_per_step.append(calls - hits if computed else 0)
        self.handle.replayed_steps.append(replayed)
        self.timer.end_step(keys, replayed_seconds if replayed else None)
        self.clock.end_step(computed=computed)

    def begin_run(self) -> None:
        """A pipeline call starts: the previous one, if any, must have run the whole schedule."""
        self.finish()
        self.resolve_times()
        self.clock.reset()
        self.replayed.reset()
        self.timer.reset()

    def finish(self) -> None:
        ran, planned = self.clock.step, len(self.config.schedule)
        if 0 < ran != planned:
            raise ValueError(
                f"the pipeline ran {ran} denoising steps but the schedule has {planned}: "
                f"pass num_inference_steps={planned} or a schedule of {ran} steps"
            )

    def resolve_times(self) -> None:
        self.timer.resolve(self.handle, self.config.replay)


def _extrapolated(last: Any, earlier: Any, weight: float) -> Any:
    """``last + (last - earlier) * weight`` for every floating tensor inside nested outputs (others as ``last``)."""
    return _map_tensors(lambda a, b: a + (a - b) * weight if a.is_floating_point() else a, last, earlier)


def _cast(value: Any, source: torch.dtype, target: torch.dtype) -> Any:
    """Casts the ``source``-dtype tensors inside nested args/outputs to ``target``."""
    return _map_tensors(lambda tensor: tensor.to(target) if tensor.dtype == source else tensor, value)


def _map_tensors(fn: Callable[..., Any], value: Any, *others: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor inside it (nested outputs, dataclasses, tuples, lists, dicts),
    given the tensors at the same place in ``others`` too; everything else is kept."""
    if isinstance(value, torch.Tensor):
        return fn(value, *others)
    if isinstance(value, BaseOutput):
        return type(value)(**{k: _map_tensors(fn, v, *(o[k] for o in others)) for k, v in value.items()})
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _map_tensors(fn, getattr(value, f.name),
                                                                  *(getattr(o, f.name) for o in others))
                                             for f in dataclasses.fields(value)})
    if isinstance(value, tuple | list):
        mapped = [_map_tensors(fn, v, *parts) for v, *parts in zip(value, *others, strict=True)]
        return tuple(mapped) if isinstance(value, tuple) else mapped
    if isinstance(value, dict):
        return {k: _map_tensors(fn, v, *(o[k] for o in others)) for k, v in value.items()}
    return value

