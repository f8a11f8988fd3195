"""The precision registry: every numeric format a denoising step can run in.

Each entry knows how to build its variant of a denoiser (a plain dtype cast, a torchao
``quantize_`` config, or nothing at all for ``skip``), what hardware runs it for real, and
how to simulate it elsewhere with torchao's fake-quantization (quantize-dequantize) modules.
Whether an entry is real, simulated or unavailable on a device is *probed*, not assumed.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tmpdiff.errors import FieldError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Availability",
    "Precision",
    "PRECISIONS",
    "Status",
    "available_precisions",
    "get_precision",
    "precision_status",
]


class Status(enum.StrEnum):
    REAL = "real"  # real kernels: numerics and latency are meaningful
    SIMULATED = "simulated"  # quantize-dequantize numerics only: latency says nothing
    UNAVAILABLE = "unavailable"


class Kind(enum.StrEnum):
    DTYPE = "dtype"  # cast the whole denoiser
    TORCHAO = "torchao"  # torchao quantize_ on the Linear layers
    SKIP = "skip"  # no denoiser call: reuse the previous step's output
    RESIDUAL = "residual"  # fp8 weights plus an fp8 residual, rebuilt to the model's dtype at each call

    @property
    def quantizes_linears(self) -> bool:
        """Whether the variant replaces some Linear layers' weights (so the layers a call runs are recorded first,
        and layers used outside their forward are left alone)."""
        return self in (Kind.TORCHAO, Kind.RESIDUAL)


@dataclass(frozen=True)
class Availability:
    name: str
    status: Status
    reason: str

    @property
    def usable(self) -> bool:
        return self.status is not Status.UNAVAILABLE


@dataclass(frozen=True)
class Precision:
    """One rung of the precision ladder.

    Args:
        name: canonical spelling used in schedules.
        kind: how the variant is built.
        bits: weight bits, for display and ordering when no measured cost exists.
        description: one line for people.
        dtype_name: the dtype of a ``DTYPE`` precision, by its name in ``torch`` (torch itself is imported
            when a variant is built, not with the registry: ``tmpdiff cache`` and ``--help`` never need it).
        config: builds the torchao config that runs real kernels, given the model's dtype.
        simulate: builds a torchao fake-quantization config with the same numerics.
        min_capability: the CUDA compute capability the real kernels need.
        cpu_real: whether torchao's CPU path runs the real config.
        dynamic_activation: activations are quantized per call, so layers whose input has
            fewer than ``MIN_ROWS`` rows (timestep and modulation embeddings) are left alone.
        group_size: the weight group size; layers whose ``in_features`` it does not divide are left alone.
        attention: ``"fp8"`` when the step's attention also runs in fp8 (see ``tmpdiff.steps.attention``).
        graphs: its compiled calls are known to replay as CUDA graphs (``tmpdiff.variants.graphs``). Only rungs
            checked on a GPU say so: a capture that fails (int8's did, on an H200) leaves the process's CUDA state
            unusable.
    """

    name: str
    kind: Kind
    bits: int
    description: str
    dtype_name: str | None = None
    config: Callable[[torch.dtype], object] | None = None
    simulate: Callable[[torch.dtype], object] | None = None
    min_capability: tuple[int, int] | None = None
    cpu_real: bool = False
    dynamic_activation: bool = False
    group_size: int | None = None
    extrapolates: bool = False  # a non-computing step that predicts its output instead of reusing it
    attention: str | None = None  # "fp8": attention runs in fp8 too (tmpdiff.steps.attention), not only the linears
    graphs: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype of a ``DTYPE`` precision, else None."""
        import torch

        return getattr(torch, self.dtype_name) if self.dtype_name is not None else None

    @property
    def computes(self) -> bool:
        """Whether the step calls the denoiser (``skip`` and ``extrap`` do not)."""
        return self.kind is not Kind.SKIP

    @property
    def may_lead(self) -> bool:
        """Whether a schedule may start with it: a step that calls no denoiser reuses (or extrapolates) earlier
        outputs, and step 0 has none."""
        return self.computes


def computes(name: str) -> bool:
    """Whether a step in precision ``name`` calls the denoiser."""
    return get_precision(name).computes


def may_lead(name: str) -> bool:
    """Whether the precision ``name`` may be a schedule's first step (the one place that rule lives)."""
    return get_precision(name).may_lead


# Every real config passes ``set_inductor_config=False``: torchao's default switches Inductor's
# coordinate-descent tuning on for the whole process, which benchmarks every Triton kernel at its
# first call. On a FLUX-sized model that was 4.5 of the ~5 minutes of fp8's first compiled run
# (H100), and it slowed every later compile in the process, bf16's included.


def _fp8_dynamic(dtype: torch.dtype) -> object:
    import torch
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor

    # torchao's per-row scales take bf16 weights only; fp16 models (SDXL, SD1.5) get per-tensor scales.
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if dtype == torch.bfloat16 else PerTensor(),
                                                     set_inductor_config=False)


def _fp8_dynamic_sim(dtype: torch.dtype) -> object:
    import torch
    from torchao.quantization import PerRow
    from torchao.quantization.qat import Float8FakeQuantizeConfig, QATConfig

    fq = Float8FakeQuantizeConfig(dtype=torch.float8_e4m3fn, granularity=PerRow())
    return QATConfig(activation_config=fq, weight_config=fq, step="prepare")


def _int8_dynamic(dtype: torch.dtype) -> object:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)


def _int8_dynamic_sim(dtype: torch.dtype) -> object:
    import torch
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    return QATConfig(activation_config=act, weight_config=weight, step="prepare")


def _fp8_weight_only(dtype: torch.dtype) -> object:
    from torchao.quantization import Float8WeightOnlyConfig

    return Float8WeightOnlyConfig(set_inductor_config=False)


def _fp8_weight_only_sim(dtype: torch.dtype) -> object:
    import torch
    from torchao.quantization import PerRow
    from torchao.quantization.qat import Float8FakeQuantizeConfig, QATConfig

    fq = Float8FakeQuantizeConfig(dtype=torch.float8_e4m3fn, granularity=PerRow())
    return QATConfig(weight_config=fq, step="prepare")


def _int8_weight_only(dtype: torch.dtype) -> object:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig(set_inductor_config=False)


def _int8_weight_only_sim(dtype: torch.dtype) -> object:
    import torch
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    return QATConfig(weight_config=weight, step="prepare")


INT4_GROUP_SIZE = 32


def _int4_weight_only(dtype: torch.dtype) -> object:
    from torchao.quantization import Int4WeightOnlyConfig

    return Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, set_inductor_config=False)


def _int4_weight_only_sim(dtype: torch.dtype) -> object:
    import torch
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    weight = IntxFakeQuantizeConfig(torch.int4, group_size=INT4_GROUP_SIZE, is_symmetric=False)  # type: ignore[attr-defined]
    return QATConfig(weight_config=weight, step="prepare")


def _mxfp8(dtype: torch.dtype) -> object:
    from torchao.prototype.mx_formats import MXDynamicActivationMXWeightConfig

    return MXDynamicActivationMXWeightConfig()


def _nvfp4(dtype: torch.dtype) -> object:
    from torchao.prototype.mx_formats import NVFP4DynamicActivationNVFP4WeightConfig

    return NVFP4DynamicActivationNVFP4WeightConfig()


_ENTRIES = (
    Precision("fp32", Kind.DTYPE, 32, "float32 weights and activations", dtype_name="float32", graphs=True),
    Precision("bf16", Kind.DTYPE, 16, "bfloat16 weights and activations", dtype_name="bfloat16", graphs=True),
    Precision("fp16", Kind.DTYPE, 16, "float16 weights and activations", dtype_name="float16", graphs=True),
    Precision(
        "fp8", Kind.TORCHAO, 8, "torchao fp8 dynamic activations + fp8 weights, per-row scales",
        config=_fp8_dynamic, simulate=_fp8_dynamic_sim, min_capability=(8, 9), dynamic_activation=True,
        graphs=True,
    ),
    Precision(
        "int8", Kind.TORCHAO, 8, "torchao int8 dynamic activations + int8 weights",
        config=_int8_dynamic, simulate=_int8_dynamic_sim, min_capability=(8, 0), cpu_real=True,
        dynamic_activation=True,
    ),
    Precision(
        "fp8wo", Kind.TORCHAO, 8, "torchao fp8 weight-only",
        config=_fp8_weight_only, simulate=_fp8_weight_only_sim, min_capability=(8, 9), cpu_real=True,
    ),
    Precision(
        "int8wo", Kind.TORCHAO, 8, "torchao int8 weight-only",
        config=_int8_weight_only, simulate=_int8_weight_only_sim, min_capability=(8, 0), cpu_real=True,
    ),
    Precision(
        "int4wo", Kind.TORCHAO, 4, f"torchao int4 weight-only, group size {INT4_GROUP_SIZE}",
        config=_int4_weight_only, simulate=_int4_weight_only_sim, min_capability=(8, 0),
        group_size=INT4_GROUP_SIZE,
    ),
    Precision(
        "mxfp8", Kind.TORCHAO, 8, "torchao MX fp8 (block-32 scales), Blackwell tensor cores",
        config=_mxfp8, min_capability=(10, 0), dynamic_activation=True, group_size=32,
    ),
    Precision(
        "nvfp4", Kind.TORCHAO, 4, "torchao NVFP4 (block-16 scales), Blackwell tensor cores",
        config=_nvfp4, min_capability=(10, 0), dynamic_activation=True, group_size=16,
    ),
    Precision(
        "fp8a8", Kind.TORCHAO, 8, "fp8 linears (as fp8) and fp8 attention (FlashAttention-3, per-head scales)",
        config=_fp8_dynamic, simulate=_fp8_dynamic_sim, min_capability=(9, 0), dynamic_activation=True,
        attention="fp8", graphs=True,
    ),
    Precision("fp8r", Kind.RESIDUAL, 16, "fp8 weights + an fp8 residual, rebuilt to the model's dtype at each "
              "call: 16-bit quality from the fp8 rung's bytes plus as many again"),
    Precision("skip", Kind.SKIP, 0, "no denoiser call: reuse the previous step's model output"),
    Precision("extrap", Kind.SKIP, 0, "no denoiser call: the model output extrapolated to this step's timestep "
              "from the last two computed steps (first order; plain reuse after only one)", extrapolates=True),
)

PRECISIONS: dict[str, Precision] = {p.name: p for p in _ENTRIES}


def get_precision(name: str, field: str = "precision") -> Precision:
    """The registry entry for ``name``; a ``FieldError`` of ``field`` (where the name was given: a schedule, a
    ladder, ...) naming the choices otherwise."""
    precision = PRECISIONS.get(name) if isinstance(name, str) else None
    if precision is None:
        where = f" in the {{{field}}}" if field != "precision" else ""
        raise FieldError(field, name, f"unknown precision {{value}}{where}: choose one of {', '.join(PRECISIONS)}")
    return precision


def precision_status(name: str, device: str | torch.device = "cpu") -> Availability:
    """Whether ``name`` runs real kernels, only simulated numerics, or not at all on ``device``."""
    import torch

    return _status(get_precision(name).name, str(torch.device(device)))


def available_precisions(device: str | torch.device = "cpu") -> list[Availability]:
    """The whole registry with its status on ``device`` (probed once per process)."""
    return [precision_status(name, device) for name in PRECISIONS]


@functools.cache
def _status(name: str, device: str) -> Availability:
    import torch

    precision = PRECISIONS[name]
    if precision.kind is Kind.SKIP:
        return Availability(name, Status.REAL, "no computation at all")
    if precision.kind is Kind.DTYPE:
        return Availability(name, Status.REAL, f"native {precision.dtype} arithmetic")
    if precision.kind is Kind.RESIDUAL:
        try:
            torch.ones(1, device=device).to(torch.float8_e4m3fn).float()
        except (RuntimeError, TypeError, AttributeError) as exc:
            return Availability(name, Status.UNAVAILABLE, f"this torch cannot hold float8_e4m3fn on {device} ({exc})")
        return Availability(name, Status.REAL, "fp8 data and residual rebuilt to the model's dtype at each call")
    hardware_reason = _missing_hardware(precision, torch.device(device))
    if hardware_reason is None:
        error = _probe(precision.config, device)
        if error is None:
            return _with_attention(precision, Availability(name, Status.REAL, f"torchao kernels on {device}"), device)
        hardware_reason = f"torchao could not run it here ({error})"
    if precision.simulate is not None and _probe(precision.simulate, device) is None:
        simulated = Availability(name, Status.SIMULATED, f"{hardware_reason}; simulated by fake quantization")
        return _with_attention(precision, simulated, device)
    return Availability(name, Status.UNAVAILABLE, hardware_reason)


def _with_attention(precision: Precision, linears: Availability, device: str) -> Availability:
    """A precision with fp8 attention is real only where its linears and the attention kernel both are."""
    if precision.attention is None:
        return linears
    if linears.status is Status.SIMULATED:
        return Availability(linears.name, Status.SIMULATED,
                            f"{linears.reason}; attention simulated by rounding q, k and v to fp8")
    import torch

    from tmpdiff.steps.attention import fp8_attention_available

    works, why = fp8_attention_available(torch.device(device).index or 0)
    if not works:
        return Availability(linears.name, Status.UNAVAILABLE, f"fp8 linears run here, fp8 attention does not: {why}")
    return Availability(linears.name, Status.REAL, f"{linears.reason}; attention: {why}")


def _missing_hardware(precision: Precision, device: torch.device) -> str | None:
    import torch

    if device.type == "cpu":
        return None if precision.cpu_real else "needs a CUDA GPU"
    if device.type != "cuda":
        return f"no real kernels on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if precision.min_capability and capability < precision.min_capability:
        need = ".".join(map(str, precision.min_capability))
        have = ".".join(map(str, capability))
        return f"needs CUDA compute capability {need}, this GPU has {have}"
    return None


def _probe(make_config: Callable[[torch.dtype], object] | None, device: str) -> str | None:
    """Quantize and run a small layer; None when it works, else a one-line reason."""
    if make_config is None:
        return "no implementation"
    import torch
    from torchao.quantization import quantize_

    try:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        layer = torch.nn.Sequential(torch.nn.Linear(256, 256)).to(device, dtype)
        quantize_(layer, make_config(dtype))
        with torch.no_grad():
            out = layer(torch.randn(32, 256, device=device, dtype=dtype))
        if not torch.isfinite(out).all():
            return "non-finite output"
    except Exception as exc:  # any failure means "not here"; the reason is shown to the user
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__
    return None
