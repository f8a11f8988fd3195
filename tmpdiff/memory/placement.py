"""Where a pipeline's bytes live under a GPU memory budget: the plan (pure arithmetic over sizes) and the placer
that carries it out and keeps it true as variants are built.

The plan is made per (model, the schedule's precisions, budget). Everything that fits stays on the GPU; what does
not streams block by block from pinned host memory (``streaming.py``). The text encoders run once per prompt (their
outputs are kept: ``prompt_cache.py``), so they stream first; then the denoiser variants are filled in, the one that
costs the fewest bytes first, and what the budget leaves after the resident variants is filled with blocks of the
next one, so a bigger budget streams fewer bytes a step. A tensor a resident variant reads (a quantized variant
shares every tensor it does not quantize with the reference) stays on the GPU even when another variant streams
its block. A plan that cannot fit even streaming is refused before any work, saying what would fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tmpdiff.errors import FieldError

__all__ = ["GIB", "Part", "Plan", "Sizes", "plan_placement"]

GIB = 1 << 30
Tensors = dict[int, int]  # tensor id -> bytes (a tensor two parts share counts once where both are resident)


@dataclass(frozen=True)
class Part:
    """One thing the plan places: a denoiser's variant (by precision), a text encoder, or the VAE.

    ``fixed``: the tensors outside its repeated blocks (always on the GPU when the part is in use); ``blocks``: each
    repeated block's tensors, in the order they run (each may stream)."""

    name: str
    kind: str  # "variant", "encoder" or "vae"
    fixed: Tensors
    blocks: tuple[Tensors, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum({**self.fixed, **{k: v for b in self.blocks for k, v in b.items()}}.values())

    @property
    def largest_block(self) -> int:
        return max((sum(b.values()) for b in self.blocks), default=0)


@dataclass(frozen=True)
class Sizes:
    """Everything a plan weighs: the parts, and the working memory of one pipeline call (activations, the VAE's
    decoding, the allocator's slack)."""

    parts: dict[str, Part]
    working: int


@dataclass(frozen=True)
class Plan:
    """Which blocks of which part are on the GPU.

    Attributes:
        budget: bytes (None: no budget, everything on the GPU).
        resident: per part in use, the indices of its blocks kept on the GPU (all of them: wholly resident).
        streamed_bytes: per part, bytes it copies to the GPU each time it runs (0: resident).
        peak: the plan's estimate of a call's peak (resident bytes + the largest streaming buffers + working).
    """

    budget: int | None
    resident: dict[str, tuple[int, ...]]
    streamed_bytes: dict[str, int]
    peak: int
    resident_bytes: int = 0
    blocks: dict[str, int] = field(default_factory=dict)  # per part, how many blocks it has
    kept: frozenset[int] = frozenset()  # the ids of the tensors on the GPU

    def streams(self, part: str) -> bool:
        return self.streamed_bytes.get(part, 0) > 0

    def line(self) -> str:
        """The plan in one line, as the CLI prints it and every evaluation records it."""
        if self.budget is None:
            return "no budget: everything on the GPU"
        placed = []
        for name, kept in self.resident.items():
            total = self.blocks.get(name, 0)
            if not self.streams(name):
                placed.append(f"{name} resident")
            elif not kept:
                placed.append(f"{name} streamed ({self.streamed_bytes[name] / GIB:.1f} GiB a call)")
            else:
                placed.append(f"{name} {len(kept)}/{total} blocks resident, "
                              f"{self.streamed_bytes[name] / GIB:.1f} GiB streamed a call")
        return (f"budget {self.budget / GIB:.1f} GiB: " + "; ".join(placed) +
                f" (~{self.peak / GIB:.1f} GiB peak)")

    def to_dict(self) -> dict[str, Any]:
        return {"budget_gib": None if self.budget is None else round(self.budget / GIB, 2), "line": self.line(),
                "streamed_gib": {k: round(v / GIB, 2) for k, v in self.streamed_bytes.items() if v},
                "peak_estimate_gib": round(self.peak / GIB, 2)}


def plan_placement(sizes: Sizes, in_use: Sequence[str], budget: int | None) -> Plan:
    """The plan for the parts ``in_use`` (variants, encoders, VAE) under ``budget`` bytes.

    Raises:
        FieldError: of ``gpu_memory``, when even streaming every block cannot fit; it says the least that would.
    """
    parts = [sizes.parts[name] for name in dict.fromkeys(in_use) if name in sizes.parts]
    everything = _everything(parts, sizes.working)
    if budget is None or everything.peak <= budget:
        return everything if budget is None else Plan(budget, everything.resident, everything.streamed_bytes,
                                                      everything.peak, everything.resident_bytes,
                                                      everything.blocks, everything.kept)
    resident: Tensors = {}
    for part in parts:
        resident.update(part.fixed)
    buffers = 2 * max((p.largest_block for p in parts), default=0)  # a block running and the next one arriving
    floor = sum(resident.values()) + buffers + sizes.working
    if floor > budget:
        raise FieldError("gpu_memory", round(budget / GIB, 1), f"{{gpu_memory}} {{value}} GiB is too little even "
                         f"streaming every block: this needs at least {floor / GIB:.1f} GiB (the parts that cannot "
                         f"stream {sum(resident.values()) / GIB:.1f}, streaming buffers {buffers / GIB:.1f}, working "
                         f"memory {sizes.working / GIB:.1f}); give more {{gpu_memory}}, fewer precisions or a "
                         "smaller size")
    kept: dict[str, list[int]] = {part.name: [] for part in parts}
    # Encoders run once per prompt: they are the last to be kept; the cheapest variant the first.
    order = sorted(parts, key=lambda p: (p.kind == "encoder", _marginal(p, range(len(p.blocks)), resident)))
    room = budget - floor
    for part in order:
        for index, block in enumerate(part.blocks):
            cost = sum(size for tensor, size in block.items() if tensor not in resident)
            if cost > room:
                break
            room -= cost
            resident.update(block)
            kept[part.name].append(index)
    return _plan(parts, kept, resident, buffers, sizes.working, budget)


def _marginal(part: Part, indices: Any, resident: Tensors) -> int:
    seen: Tensors = {}
    for index in indices:
        seen.update({t: s for t, s in part.blocks[index].items() if t not in resident})
    return sum(seen.values())


def _everything(parts: list[Part], working: int) -> Plan:
    resident: Tensors = {}
    for part in parts:
        resident.update(part.fixed)
        for block in part.blocks:
            resident.update(block)
    total = sum(resident.values())
    return Plan(None, {p.name: tuple(range(len(p.blocks))) for p in parts}, {p.name: 0 for p in parts},
                total + working, total, {p.name: len(p.blocks) for p in parts}, frozenset(resident))


def _plan(parts: list[Part], kept: dict[str, list[int]], resident: Tensors, buffers: int, working: int,
          budget: int) -> Plan:
    streamed = {}
    for part in parts:
        held = set(kept[part.name])
        streamed[part.name] = sum(s for i, b in enumerate(part.blocks) if i not in held for t, s in b.items()
                                  if t not in resident)
    needs_buffers = buffers if any(streamed.values()) else 0
    total = sum(resident.values())
    return Plan(budget, {name: tuple(indices) for name, indices in kept.items()}, streamed,
                total + needs_buffers + working, total, {p.name: len(p.blocks) for p in parts}, frozenset(resident))
