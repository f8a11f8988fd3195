"""Resident precision variants of one denoiser, built once and kept across pipeline calls.

A torchao variant is a copy of the denoiser that *shares* every parameter with the original
(``copy.deepcopy`` with a pre-filled memo) and then has its Linear weights swapped by
``quantize_``; so only the quantized weights cost memory, and the original is never touched.
"""

from __future__ import annotations

import enum
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from tmpdiff.steps.attention import attention_context, mark
from tmpdiff.steps.precisions import Kind, Precision, Status, get_precision, precision_status
from tmpdiff.variants import aot
from tmpdiff.variants.build_profile import BuildProfile, Phases
from tmpdiff.variants.compile_cache import CompileCache, CompileKey
from tmpdiff.variants.copies import copy_module, find_blocks, parallel_like, tensor_bytes, tensors_of
from tmpdiff.variants.graphs import CallGraphs, split_graphs_enabled
from tmpdiff.variants.residual import make_residual

__all__ = ["MIN_ROWS", "BuildInfo", "Mode", "VariantBank", "bank_for"]


class Mode(enum.StrEnum):
    """How a variant runs."""

    EAGER = "eager"
    COMPILED = "compiled"  # torch.compile, per repeated block
    AOT = "aot"  # AOTInductor packages, per repeated block: no torch.compile in the process

    @classmethod
    def coerce(cls, value: bool | str | Mode | None, device: torch.device) -> Mode:
        """``True``/``False`` (compile or not), a mode name, or None (compiled on CUDA, eager elsewhere)."""
        if value is None:
            return cls.COMPILED if device.type == "cuda" else cls.EAGER
        if isinstance(value, bool):
            return cls.COMPILED if value else cls.EAGER
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown compile mode {value!r}: choose one of {choices}") from None


@dataclass(frozen=True)
class BuildInfo:
    """What building one variant cost, and whether a stored compilation was reused."""

    precision: str
    mode: Mode
    seconds: float
    from_cache: bool
    note: str = ""
    # Where the seconds went (see build_profile.py): weights (cast or quantized), load_cache, dynamo_trace,
    # guards, backend, dynamo_other, first_run, save_cache; export and load_packages for ahead-of-time variants.
    phases: Phases = field(default_factory=dict)
    inductor_compilations: int = 0  # graphs Inductor compiled afresh (0: everything came from its caches)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "mode": self.mode.value, "seconds": round(self.seconds, 3),
                "from_cache": self.from_cache, "inductor_compilations": self.inductor_compilations,
                "phases": {name: round(seconds, 3) for name, seconds in self.phases.items()},
                **({"note": self.note} if self.note else {})}


Call = tuple[tuple[Any, ...], dict[str, Any]]

# torchao's dynamic-activation kernels need at least this many rows per matmul; smaller
# inputs (timestep and modulation embeddings at batch 1) stay in the reference precision.
MIN_ROWS = 16
MIN_FEATURES = 16


class BankHome(Protocol):
    """Where a bank's bytes live under a memory budget (``memory.placer.Placer``), as the bank sees it: told of each
    variant built, and asked to bring a block of the reference onto the device while a variant is quantized from
    it. The bank holds one, typed, so variants import nothing from the memory layer above them."""

    def variant_built(self) -> None: ...

    def reference_onloaded(self, bank: VariantBank, index: int) -> AbstractContextManager[None]: ...


@dataclass
class VariantBank:
    """The variants of one denoiser, keyed by (precision, mode). It holds its denoiser weakly: the process's table
    of banks is keyed by the denoiser, so a strong reference would keep every pipeline ever loaded (and its GPU
    memory) alive; when the pipeline goes, its bank and variants go with it."""

    denoiser: weakref.ref[nn.Module]
    variants: dict[tuple[str, Mode], nn.Module] = field(default_factory=dict)
    builds: dict[tuple[str, Mode], BuildInfo] = field(default_factory=dict)
    linear_rows: dict[str, int] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    device: torch.device | None = None
    graphs: CallGraphs = field(default_factory=CallGraphs)
    home: torch.device | None = None  # where the denoiser lives when some of its blocks stream (``settle_in``)
    placer: BankHome | None = None  # the pipeline's placer under a memory budget: told of every variant built

    @property
    def reference(self) -> nn.Module:
        """The denoiser itself (the reference precision's variant)."""
        module = self.denoiser()
        if module is None:
            raise RuntimeError("the denoiser of this variant bank was freed; load the pipeline again")
        return module

    def settle_in(self, device: torch.device, placer: BankHome) -> None:
        """Under a memory budget: the denoiser lives on ``device`` (though some blocks stream) and ``placer``
        places what it builds."""
        self.home, self.placer = device, placer

    def tensors_moved(self) -> None:
        """Some of the bank's tensors moved between the host and the device: captured CUDA graphs point at the old
        addresses, so they go."""
        self.graphs.clear()

    @property
    def reference_dtype(self) -> torch.dtype:
        return next(self.reference.parameters()).dtype

    def needs_rows(self, name: str) -> bool:
        """Whether a call must be recorded before ``name`` is built: which Linear layers run through their own
        forward (only those are quantized), and with how many rows (dynamic activations need enough)."""
        return get_precision(name).kind.quantizes_linears and self.linear_rows is None

    def unswitched_layers(self) -> list[str]:
        """Linear layers never called through their own forward in the recorded call (their weights are used
        some other way, e.g. passed to ``F.multi_head_attention_forward``): quantized variants leave them in
        the reference precision."""
        if self.linear_rows is None:
            return []
        return [name for name, layer in self.reference.named_modules()
                if isinstance(layer, nn.Linear) and name not in self.linear_rows]

    def get(self, name: str, mode: Mode) -> nn.Module | None:
        self._drop_if_moved()
        return self.variants.get((name, mode))

    def call(self, name: str, mode: Mode, variant: nn.Module, args: tuple, kwargs: dict,
             graphs: bool) -> tuple[Any, float]:
        """One call of a built variant: the output, and seconds spent capturing its CUDA graph (0 unless this call
        captured one). Compiled variants on one CUDA device replay a graph of the whole call when ``graphs`` and
        their precision is known to be capturable."""

        def run(*args: Any, **kwargs: Any) -> Any:
            with attention_context(variant):
                return variant(*args, **kwargs)

        device = self._device()
        split = getattr(self.reference, "_parallel_config", None) is not None  # its calls talk to peers
        if (not graphs or mode is Mode.EAGER or device.type != "cuda" or not _capturable(name, device)
                or (split and not split_graphs_enabled())):
            return run(*args, **kwargs), 0.0
        with torch.cuda.device(device):  # capture and replay on the variant's GPU, whichever is current
            return self.graphs.call((name, mode), run, args, kwargs)

    def build(self, name: str, mode: Mode, example: Call | None = None,
              cache: CompileCache | None = None) -> nn.Module:
        """Build (or return) the variant; the caller holds no hook on the reference during this.

        For ``COMPILED`` and ``AOT``, ``example`` (one denoiser call's arguments, cast to the
        variant's dtype) is run once here, so compilation happens now (through ``cache``) and
        not inside a timed step.
        """
        self._drop_if_moved()
        key = (name, mode)
        if key not in self.variants:
            start, profile = time.perf_counter(), BuildProfile()
            eager = self.variants.get((name, Mode.EAGER))
            if eager is None:
                with profile.timed("weights"):
                    eager = self._make(get_precision(name))
            if mode is Mode.EAGER:
                variant, from_cache, note = eager, False, ""
            else:
                # A copy that shares the eager variant's (quantized) weights: no second copy.
                self.variants.setdefault((name, Mode.EAGER), eager)  # kept: a streamed step runs it
                build = self._compile if mode is Mode.COMPILED else self._compile_ahead
                variant, from_cache, note = build(name, eager, example, cache, profile)
            self.variants[key] = variant
            left = self.unswitched_layers() if get_precision(name).kind.quantizes_linears else []
            if left:
                note = (f"{note}; " if note else "") + (f"{len(left)} Linear layers not called through their forward "
                                                        f"stay in the reference precision: {', '.join(left[:8])}")
            self.builds[key] = BuildInfo(name, mode, time.perf_counter() - start, from_cache, note, profile.phases,
                                         profile.inductor_compilations)
            if self.placer is not None:
                self.placer.variant_built()  # its real size known: placed within the budget before it runs
        return self.variants[key]

    def _compile(self, name: str, eager: nn.Module, example: Call | None, cache: CompileCache | None,
                 profile: BuildProfile) -> tuple[nn.Module, bool, str]:
        variant = copy_module(eager, share=True)
        _compile_regionally(variant)
        if example is None:
            return variant, False, "compiles at its first call"
        args, kwargs = example
        key = CompileKey.make(Mode.COMPILED.value, name, variant, args, kwargs, self._device())
        with profile.timed("load_cache"):
            loaded = cache.load_artifacts(key) if cache else False
        start = time.perf_counter()
        with profile.compiling(), torch.no_grad(), attention_context(variant):
            variant(*args, **kwargs)
            _synchronize(self._device())
        if cache and not loaded:
            with profile.timed("save_cache"):
                cache.save_artifacts(key, time.perf_counter() - start)
        return variant, loaded, ""

    def _compile_ahead(self, name: str, eager: nn.Module, example: Call | None, cache: CompileCache | None,
                       profile: BuildProfile) -> tuple[nn.Module, bool, str]:
        """AoT packages per repeated block class; torch.compile instead, with a warning, for a model
        without repeated blocks or a block that export or AOTInductor cannot take."""
        if example is None:
            raise ValueError("an ahead-of-time variant is built from one example call: pass `example`")
        works, why = aot.loading_works(self._device(), cache.root if cache is not None else None)
        if works and get_precision(name).attention:
            works, why = False, "its fp8 attention is chosen around the call, which a package does not carry"
        if works and not aot.repeated_blocks(eager):
            why = f"{type(eager).__name__} declares no repeated blocks"
        elif works:
            try:
                variant = copy_module(eager, share=True)
                return variant, self._apply_packages(name, eager, variant, example, cache, profile), ""
            except aot.AotError as exc:
                why = str(exc)
        note = f"no ahead-of-time variant ({why}): compiled with torch.compile instead"
        warnings.warn(note, aot.AotWarning, stacklevel=2)
        variant, loaded, _ = self._compile(name, eager, example, cache, profile)
        return variant, loaded, note

    def _apply_packages(self, name: str, eager: nn.Module, variant: nn.Module, example: Call,
                        cache: CompileCache | None, profile: BuildProfile) -> bool:
        args, kwargs = example
        blocks = aot.repeated_blocks(variant)
        with profile.timed("first_run"), aot.capture_block_calls(eager) as calls, torch.no_grad():
            eager(*args, **kwargs)
        key = CompileKey.make(Mode.AOT.value, name, variant, args, kwargs, self._device())
        if cache is not None and cache.has_packages(key, list(blocks)):
            packages, from_cache = {b: cache.package_path(key, b) for b in blocks}, True
        else:
            with profile.timed("export"):
                packages, from_cache = self._export_blocks(blocks, calls, key, cache), False
        with profile.timed("load_packages"):
            for block_name, instances in blocks.items():
                aot.apply_package_(instances, packages[block_name])
        return from_cache

    def _export_blocks(self, blocks: dict[str, list[nn.Module]], calls: dict[str, aot.BlockCall],
                       key: CompileKey, cache: CompileCache | None) -> dict[str, Path]:
        folder = Path(tempfile.mkdtemp(prefix="tmpdiff-aot-"))
        start = time.perf_counter()
        built = {}
        for block_name, instances in blocks.items():
            built[block_name] = folder / f"{block_name}.pt2"
            # Export a throwaway copy: unwrapping quantized weights re-parametrizes the module.
            aot.compile_block(copy_module(instances[0], share=True), calls[block_name], built[block_name])
        if cache is None:
            return built
        cache.save_packages(key, built, time.perf_counter() - start)
        return {b: cache.package_path(key, b) for b in blocks}

    def memory_bytes(self) -> dict[str, int]:
        """Extra bytes each resident variant holds beyond the reference weights (and, for a
        compiled variant, beyond its eager twin, whose weights it shares)."""
        reference = {id(t) for t in tensors_of(self.reference)}
        sizes = {}
        for (name, mode), variant in self.variants.items():
            eager = self.variants.get((name, Mode.EAGER)) if mode is not Mode.EAGER else None
            shared = reference | ({id(t) for t in tensors_of(eager)} if eager is not None else set())
            key = name if mode is Mode.EAGER else f"{name}+{mode.value}"
            sizes[key] = sum(tensor_bytes(t) for t in tensors_of(variant) if id(t) not in shared)
        return sizes

    def _device(self) -> torch.device:
        return self.home or next(self.reference.parameters()).device

    def _make(self, precision: Precision) -> nn.Module:
        device = self._device()
        status = precision_status(precision.name, device)
        if status.status is Status.UNAVAILABLE:
            raise ValueError(f"precision {precision.name!r} is unavailable on {device}: {status.reason}")
        if precision.kind is Kind.DTYPE:
            if precision.dtype == self.reference_dtype:
                return copy_module(self.reference, share=True)
            # A cast rewrites parameters in place, so this copy must not share them.
            return copy_module(self.reference, share=False).to(precision.dtype)
        if precision.kind is Kind.RESIDUAL:
            variant = copy_module(self.reference, share=True, parallelize=False)
            make_residual(variant, self.layer_filter(precision), self._fp8_halves())
            return variant.eval()

        make_config = precision.config if status.status is Status.REAL else precision.simulate
        assert make_config is not None  # a usable TORCHAO precision has one of the two
        variant = copy_module(self.reference, share=True, parallelize=False)
        self._quantize(variant, make_config(self.reference_dtype), self.layer_filter(precision))
        if precision.attention:
            mark(variant, simulated=status.status is Status.SIMULATED)
        if (parallel := getattr(self.reference, "_parallel_config", None)) is not None:
            parallel_like(variant, parallel)  # after quantize_, which may replace the modules hooks sit on
        return variant.eval()

    def _fp8_halves(self) -> Callable[[str], tuple[torch.Tensor, torch.Tensor] | None]:
        """An fp8 variant's data and scales of a Linear layer by name (``fp8``'s, else ``fp8wo``'s, where one is
        built with real kernels: torchao's fp8 tensors, one scale a row): the residual rung shares them instead of
        a copy, so beside that variant it adds only its residual."""
        built = [self.variants.get((name, Mode.EAGER)) for name in ("fp8", "fp8wo")]
        fp8 = next((variant for variant in built if variant is not None), None)
        layers = dict(fp8.named_modules()) if fp8 is not None else {}

        def halves(name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
            weight = getattr(layers.get(name), "weight", None)
            data, scale = getattr(weight, "qdata", None), getattr(weight, "scale", None)
            if data is None or scale is None or data.dtype != torch.float8_e4m3fn or scale.numel() != data.shape[0]:
                return None  # simulated fp8, or per-tensor scales: the rung quantizes its own first half
            return data, scale.reshape(-1, 1).float()

        return halves

    def _quantize(self, variant: nn.Module, config: Any, takes: Callable[[nn.Module, str], bool]) -> None:
        """``quantize_`` on the variant; under a placer block by block, each of the reference's blocks on the device
        for it (a streamed one brought in), so the quantized weights are made on the device they will live on."""
        from torchao.quantization import quantize_

        if self.placer is None:
            quantize_(variant, config, filter_fn=takes)
            return
        names = {id(module): name for name, module in variant.named_modules()}
        inside: set[str] = set()
        for index, block in enumerate(find_blocks(variant)):
            prefix = names[id(block)]
            inside |= {f"{prefix}.{name}" if name else prefix for name, _ in block.named_modules()}
            with self.placer.reference_onloaded(self, index):
                quantize_(block, config, filter_fn=lambda m, n, p=prefix: takes(m, f"{p}.{n}" if n else p))
        quantize_(variant, config, filter_fn=lambda m, n: n not in inside and takes(m, n))

    def layer_filter(self, precision: Precision) -> Callable[[nn.Module, str], bool]:
        """Which Linear layers a torchao precision quantizes (by module and name within the denoiser)."""
        recorded = self.linear_rows is not None
        rows = self.linear_rows or {}

        def takes(module: nn.Module, name: str) -> bool:
            if not isinstance(module, nn.Linear):
                return False
            if recorded and name not in rows:  # its weight is used outside its forward: a quantized tensor
                return False  # there would meet ops torchao does not implement
            if module.in_features % MIN_FEATURES or module.out_features % MIN_FEATURES:
                return False
            if precision.group_size and module.in_features % precision.group_size:
                return False
            return not (precision.dynamic_activation and rows.get(name, MIN_ROWS) < MIN_ROWS)

        return takes

    def _drop_if_moved(self) -> None:
        device = self._device()
        if self.device != device:
            self.variants.clear()
            self.graphs.clear()
            self.device = device


_BANKS: weakref.WeakKeyDictionary[nn.Module, VariantBank] = weakref.WeakKeyDictionary()
_BANKS_LOCK = threading.Lock()


def bank_for(module: nn.Module) -> VariantBank:
    """The one bank of ``module``'s variants for this process."""
    with _BANKS_LOCK:
        if module not in _BANKS:
            _BANKS[module] = VariantBank(weakref.ref(module))
        return _BANKS[module]


@contextmanager
def record_linear_rows(module: nn.Module) -> Iterator[dict[str, int]]:
    """Records, during the block, how many rows each Linear layer's input has."""
    rows: dict[str, int] = {}
    handles = []
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear):

            def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
                x = args[0]
                rows[name] = min(rows.get(name, 1 << 62), x.numel() // max(x.shape[-1], 1))

            handles.append(layer.register_forward_pre_hook(hook))
    try:
        yield rows
    finally:
        for handle in handles:
            handle.remove()


def _capturable(name: str, device: torch.device) -> bool:
    """Whether a precision's calls are known to replay as CUDA graphs here: the rungs checked on a GPU, with their
    real kernels (a simulated rung's fake quantization was never captured)."""
    precision = get_precision(name)
    return precision.graphs and (precision.kind is not Kind.TORCHAO
                                 or precision_status(name, device).status is Status.REAL)


def _compile_regionally(module: nn.Module) -> None:
    """Compile the repeated blocks where the model declares them, else the whole module.

    ``dynamic=False``: the first block of a run can see a differently strided input than the
    others (a view of the previous block's output); with automatic dynamic shapes that second
    graph of the block class would be recompiled with symbolic strides, slower to build and to run.
    """
    if getattr(module, "_repeated_blocks", None):
        compile_blocks: Any = module.compile_repeated_blocks  # a diffusers ModelMixin's
        compile_blocks(fullgraph=True, dynamic=False)
    else:
        module.compile(dynamic=False)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
