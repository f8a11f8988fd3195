"""Per-step precision switching inside an unmodified diffusers pipeline.

Two attachments, both removed on exit:

* a diffusers ``ModelHook`` on the denoiser whose ``new_forward`` sends each call to the
  variant the schedule names for the current step (or replays the previous step's output for
  ``skip``);
* a wrapper around the scheduler's ``step``, which every diffusers pipeline calls exactly once
  per denoising step. Counting those calls gives the step index for any pipeline: ones that
  call the denoiser several times a step (true CFG), ones with only the legacy ``callback``,
  and schedulers without ``step_index``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

from diffusers.hooks import HookRegistry
from torch import nn

from tmpdiff.steps.replay import ReplayStore
from tmpdiff.steps.schedule import Schedule
from tmpdiff.switching.router import DenoiserHook, ScheduleHandle, StepRouter, SwitchConfig
from tmpdiff.variants.bank import Mode, bank_for
from tmpdiff.variants.compile_cache import CompileCache
from tmpdiff.variants.graphs import graphs_enabled

__all__ = ["DENOISER_NAMES", "ScheduleHandle", "apply_schedule", "denoiser_of", "denoisers_of"]

HOOK_NAME = "tmpdiff_step_switch"
_PIPE_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_PIPE_LOCKS_GUARD = threading.Lock()


# The pipeline attributes that hold a denoiser, in the order a pipeline calls them: Wan 2.2 runs `transformer`
# to its boundary step and `transformer_2` after it; Stable Cascade's prior and decoder pipelines call theirs
# `prior` and `decoder`.
DENOISER_NAMES = ("transformer", "transformer_2", "unet", "prior", "decoder")


def denoisers_of(pipe: Any, denoiser: str | nn.Module | None = None) -> list[tuple[str, nn.Module]]:
    """Every denoiser the pipeline calls per step, by attribute name; ``denoiser`` names one explicitly
    (an attribute name or the module itself)."""
    if isinstance(denoiser, nn.Module):
        return [("denoiser", denoiser)]
    if denoiser is not None:
        module = getattr(pipe, denoiser, None)
        if not isinstance(module, nn.Module):
            raise ValueError(f"{type(pipe).__name__} has no module {denoiser!r} to switch precisions on: "
                             f"its modules are {', '.join(_modules(pipe)) or 'none'}")
        return [(denoiser, module)]
    found = [(name, module) for name in DENOISER_NAMES if isinstance(module := getattr(pipe, name, None), nn.Module)]
    if not found:
        raise ValueError(f"{type(pipe).__name__} has no `transformer`, `unet`, `prior` or `decoder` to switch "
                         f"precisions on: name its denoiser with denoiser=... (its modules: "
                         f"{', '.join(_modules(pipe)) or 'none'})")
    return found


def denoiser_of(pipe: Any) -> nn.Module:
    """The pipeline's first denoiser (``transformer``, ``unet``, ...): see ``denoisers_of`` for all of them."""
    return denoisers_of(pipe)[0][1]


def _modules(pipe: Any) -> list[str]:
    components = getattr(pipe, "components", None) or {}
    return [name for name, value in components.items() if isinstance(value, nn.Module)]


@contextmanager
def apply_schedule(
    pipe: Any,
    schedule: Schedule | str,
    *,
    compile: bool | str | Mode | None = None,
    synchronize: bool = True,
    cache: CompileCache | None = None,
    on_build: Callable[[str, Mode, float | None], None] | None = None,
    replay: ReplayStore | None = None,
    replay_key: str | None = None,
    denoiser: str | nn.Module | None = None,
    cuda_graphs: bool | None = None,
    eager: Collection[str] = (),
) -> Iterator[ScheduleHandle]:
    """Run every denoiser call of step ``i`` in ``schedule[i]`` during the block.

    Args:
        pipe: a diffusers pipeline with a ``transformer`` or ``unet`` and a ``scheduler``.
        schedule: a ``Schedule`` or its text form, e.g. ``"bf16*2,int8wo*2"``.
        compile: ``True`` to ``torch.compile`` each variant (regionally where the model allows),
            ``"aot"`` for ahead-of-time compiled packages (no ``torch.compile`` in this process),
            ``False`` for eager; defaults to compiled on CUDA and eager elsewhere.
        synchronize: time steps on the device's own clock (CUDA events at step boundaries, read
            once the block ends) so ``step_seconds`` is true for asynchronous kernels.
        cache: where compiled variants are stored and reloaded across processes; default: the
            tmpdiff cache folder (``$TMPDIFF_CACHE_DIR`` or the user cache folder).
        on_build: called before a variant is built with its precision, mode and the seconds its
            last compilation on this machine took (None when unknown), so a front end can say so.
        replay: where denoiser outputs are recorded and replayed for schedule prefixes already run
            (``replay.py``); needs ``replay_key``, the digest of everything but the schedule that decides
            the run (model, prompt, seed, size, steps, guidance, device and compile mode).
        denoiser: the denoiser to switch, by attribute name or as the module; default: every denoiser the
            pipeline has (``transformer`` and ``transformer_2`` of Wan 2.2, ``prior`` of Stable Cascade, ...),
            each step's calls routed to its precision whichever of them makes them.
        cuda_graphs: replay each compiled variant's whole call as a CUDA graph (captured on its first call, outside
            the step's time; ``graphs.py``); default ``$TMPDIFF_CUDA_GRAPHS``, else on. Ignored off CUDA; a
            context-parallel denoiser's calls only with ``$TMPDIFF_CUDA_GRAPHS=all``.
        eager: precisions that run eager (no compiled copy, no graph) whatever ``compile`` says: those a memory
            budget streams block by block (``memory.placer``).

    Example:
        >>> with apply_schedule(pipe, "bf16*2,int8wo*2") as handle:  # doctest: +SKIP
        ...     image = pipe(prompt, num_inference_steps=4).images[0]
        >>> handle.steps_run  # doctest: +SKIP
        ['bf16', 'bf16', 'int8wo', 'int8wo']
    """
    schedule = Schedule.coerce(schedule)
    modules = denoisers_of(pipe, denoiser)
    device = next(modules[0][1].parameters()).device
    mode = Mode.coerce(compile, device)
    if mode is not Mode.EAGER and cache is None:
        cache = default_compile_cache()
    if cache is not None:
        cache.activate()
    handle = ScheduleHandle(schedule=schedule, mode=mode, _banks=[bank_for(m) for _, m in modules],
                            denoisers=[name for name, _ in modules])
    lock = _lock_for(pipe)
    if not lock.acquire(blocking=False):
        raise ValueError("apply_schedule is already active on this pipeline: nest no blocks, run one at a time")
    try:
        if replay is not None and not replay_key:
            raise ValueError("replay needs a replay_key naming the setting the outputs belong to")
        config = SwitchConfig(schedule=schedule, mode=mode, pipeline=type(pipe).__name__,
                               denoisers=tuple(handle.denoisers), synchronize=synchronize and device.type == "cuda",
                               cache=cache, on_build=on_build, replay=replay, replay_key=replay_key,
                               scheduler=pipe.scheduler, cuda_graphs=graphs_enabled(cuda_graphs),
                               eager=frozenset(eager))
        router = StepRouter(config, handle)
        with contextlib.ExitStack() as hooks:
            for _, module in modules:
                hooks.enter_context(_hooked(module, DenoiserHook(router, bank_for(module))))
            hooks.enter_context(_counting_steps(pipe.scheduler, router))
            yield handle
        router.finish()
        router.resolve_times()
    finally:
        lock.release()


@contextmanager
def _hooked(module: nn.Module, router: DenoiserHook) -> Iterator[None]:
    had_registry = "_diffusers_hook" in module.__dict__
    had_forward = "forward" in module.__dict__
    registry = HookRegistry.check_if_exists_or_initialize(module)
    if registry.get_hook(HOOK_NAME) is not None:
        raise ValueError("a tmpdiff schedule is already attached to this denoiser")
    registry.register_hook(router, HOOK_NAME)
    try:
        yield
    finally:
        registry.remove_hook(HOOK_NAME, recurse=False)
        # Leave the module exactly as found: no instance `forward`, no registry we created.
        if not had_forward and not registry.hooks:
            module.__dict__.pop("forward", None)
        if not had_registry and not registry.hooks:
            module.__dict__.pop("_diffusers_hook", None)


@contextmanager
def _counting_steps(scheduler: Any, router: StepRouter) -> Iterator[None]:
    """Wraps ``set_timesteps`` (a run begins) and ``step`` (a denoising step ends)."""
    wrapped = {
        "set_timesteps": router.begin_run,
        "step": router.end_step,
    }
    saved = {name: scheduler.__dict__.get(name) for name in wrapped}
    for name, event in wrapped.items():
        setattr(scheduler, name, _after(getattr(scheduler, name), event, before=name == "set_timesteps"))
    try:
        yield
    finally:
        for name, own in saved.items():
            if own is None:
                delattr(scheduler, name)
            else:
                setattr(scheduler, name, own)


def _after(method: Any, event: Any, before: bool) -> Any:
    @functools.wraps(method)  # pipelines inspect set_timesteps' signature
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            event()
        result = method(*args, **kwargs)
        if not before:
            event()
        return result

    return wrapper



_DEFAULT_CACHE: CompileCache | None = None


def default_compile_cache() -> CompileCache:
    """The compile cache in the tmpdiff cache folder, shared by every schedule of this process."""
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = CompileCache()
    return _DEFAULT_CACHE


def _lock_for(pipe: Any) -> threading.Lock:
    with _PIPE_LOCKS_GUARD:
        if pipe not in _PIPE_LOCKS:
            _PIPE_LOCKS[pipe] = threading.Lock()
        return _PIPE_LOCKS[pipe]

