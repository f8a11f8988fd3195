"""Where a pipeline's bytes live under a GPU memory budget: the plan (pure arithmetic over sizes) and the placer
that carries it out and keeps it true as variants are built.

The plan is made per (model, the schedule's precisions, budget). Everything that fits stays on the GPU; what does
not streams block by block from pinned host memory (``streaming.py``). Residency goes to the bytes an image reads
most: a block's bytes times the calls that read them (``reads``: a variant runs at each of its schedule's steps, a
text encoder once a prompt, so the encoders stream first and a variant of 20 steps is kept before one of 8). Among
parts read equally often, the one that costs the fewest bytes is kept first; a block that does not fit is passed
over for smaller ones after it, so a bigger budget streams fewer bytes an image. A tensor a resident variant reads
(a quantized variant shares every tensor it does not quantize with the reference) stays on the GPU even when another
variant streams its block. A plan that cannot fit even streaming is refused before any work, saying what would fit.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

from tmpdiff.errors import FieldError
from tmpdiff.memory.meter import GIB, gib

__all__ = ["GIB", "Part", "PartKind", "Plan", "Sizes", "plan_beside_reference", "plan_placement"]

PartKind = Literal["variant", "encoder", "vae"]  # a denoiser's variant runs each step, an encoder once a prompt
Tensors = dict[int, int]  # tensor id -> bytes (a tensor two parts share counts once where both are resident)


@dataclass(frozen=True)
class Part:
    """One thing the plan places: a denoiser's variant (by precision), a text encoder, or the VAE.

    ``fixed``: the tensors outside its repeated blocks (always on the GPU when the part is in use); ``blocks``: each
    repeated block's tensors, in the order they run (each may stream)."""

    name: str
    kind: PartKind
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
    per_image: int | None = None  # bytes streamed for one image of the schedule it was made for
    reference_per_image: int | None = None  # the same for the reference schedule planned alone, under this budget

    pinned: frozenset[str] = frozenset()  # the parts whose streamed blocks are page-locked (variants an image reads)

    @property
    def host_bytes(self) -> int:
        """Bytes the streamed blocks of the variants an image reads hold in page-locked host memory (what the OS
        cannot reclaim); encoders (run once a prompt) and variants it does not read stay in pageable memory."""
        return sum(size for name, size in self.streamed_bytes.items() if name in self.pinned)

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
                where = "" if name in self.pinned else ", from pageable memory"
                placed.append(f"{name} streamed ({self.streamed_bytes[name] / GIB:.1f} GiB a call{where})")
            else:
                placed.append(f"{name} {len(kept)}/{total} blocks resident, "
                              f"{self.streamed_bytes[name] / GIB:.1f} GiB streamed a call")
        pinned = f"; {self.host_bytes / GIB:.1f} GiB pinned in host memory" if self.host_bytes else ""
        return (f"budget {self.budget / GIB:.1f} GiB: " + "; ".join(placed) +
                f" (~{self.peak / GIB:.1f} GiB peak{pinned}{self._per_image_words()})")

    def _per_image_words(self) -> str:
        """How many bytes an image streams, beside the reference's under the same budget (when they differ)."""
        if not self.per_image or self.reference_per_image is None:
            return ""
        said = f"; {self.per_image / GIB:.0f} GiB streamed an image"
        if self.per_image > self.reference_per_image:
            return said + (f", more than the reference alone ({self.reference_per_image / GIB:.0f} GiB): this "
                           "budget holds too little for its precisions beside each other")
        return said + f", the reference alone {self.reference_per_image / GIB:.0f} GiB"

    def streamed_per_image(self, reads: Mapping[str, int]) -> int:
        """Bytes copied to the GPU for one image: each part's streamed bytes a call times the calls that read it."""
        return sum(self.streamed_bytes.get(name, 0) * count for name, count in reads.items())

    def to_dict(self) -> dict[str, Any]:
        return {"budget_gib": gib(self.budget), "line": self.line(),
                "streamed_gib": {k: gib(v) for k, v in self.streamed_bytes.items() if v},
                "peak_estimate_gib": gib(self.peak)}


def plan_placement(sizes: Sizes, in_use: Sequence[str], budget: int | None,
                   reads: Mapping[str, int] | None = None, host: int | None = None) -> Plan:
    """The plan for the parts ``in_use`` (variants, encoders, VAE) under ``budget`` bytes, keeping resident the
    bytes read most often: ``reads`` says how many times each part runs for an image (default: once each). The
    blocks it streams are page-locked in host memory: at most ``host`` bytes (None: no host limit).

    Raises:
        FieldError: of ``gpu_memory``, when even streaming every block cannot fit; it says the least that would.
            Of ``host_memory``, when the streamed blocks need more page-locked host memory than ``host``.
    """
    parts = [sizes.parts[name] for name in dict.fromkeys(in_use) if name in sizes.parts]
    everything = _everything(parts, sizes.working)
    if budget is None or everything.peak <= budget:
        return everything if budget is None else replace(everything, budget=budget, per_image=0)
    count = {part.name: (reads or {}).get(part.name, 1) for part in parts}
    unread = _beside_what_is_read(parts, count, sizes.working, budget)
    if unread is not None:
        return _checked_host(unread, host, budget)
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
    fills = (_fill_by_worth, partial(_fill_part_by_part, by_reads=True), partial(_fill_part_by_part, by_reads=False))
    plans = [_plan(parts, fill(parts, dict(resident), budget - floor, count), buffers, sizes.working, budget, count)
             for fill in fills]
    best = min(plans, key=lambda plan: plan.streamed_per_image(count))  # no one greedy order is always best
    return _checked_host(replace(best, per_image=best.streamed_per_image(count)), host, budget)


def _checked_host(plan: Plan, host: int | None, budget: int) -> Plan:
    """``plan``, if its page-locked blocks fit the ``host`` budget; a one-line refusal otherwise."""
    if host is not None and plan.host_bytes > host:
        raise FieldError("host_memory", round(host / GIB, 1), f"{{host_memory}} {{value}} GiB is too little for "
                         f"this plan: under {gib(budget, 1)} GiB of GPU memory it streams {gib(plan.host_bytes, 1)} "
                         "GiB of blocks from page-locked host memory; give more {host_memory} or {gpu_memory}, or "
                         "fewer precisions in the {schedule}")
    return plan


def _beside_what_is_read(parts: list[Part], reads: dict[str, int], working: int, budget: int) -> Plan | None:
    """When everything an image reads fits (with its working memory), the plan that keeps it all resident and gives
    the parts it does not read (a variant of another schedule) what room is left: they never stream during a call,
    so they need no streaming buffers and never make a part that is read stream. None when what is read does not
    fit, or everything is read."""
    read = [part for part in parts if reads[part.name] > 0]
    if len(read) == len(parts):
        return None
    resident = _all_tensors(read)
    unread = [part for part in parts if reads[part.name] == 0]
    for part in unread:
        resident.update(part.fixed)
    room = budget - sum(resident.values()) - working
    if room < 0:
        return None
    kept, resident = _fill_part_by_part(unread, resident, room, reads, by_reads=False)
    kept.update({part.name: list(range(len(part.blocks))) for part in read})
    return replace(_plan(parts, (kept, resident), 0, working, budget, reads), per_image=0)


def plan_beside_reference(sizes: Sizes, in_use: Sequence[str], budget: int | None, reads: Mapping[str, int],
                          reference: str, steps: int, host: int | None = None) -> Plan:
    """The plan for a schedule (``reads``), with the bytes the reference schedule (the ``reference`` part at each
    of the ``steps``) would stream planned alone under the same budget: what a comparison measures against."""
    plan = plan_placement(sizes, in_use, budget, reads, host)
    if budget is None or reference not in sizes.parts:
        return plan
    alone = {name: steps if name == reference else reads.get(name, 1) for name in in_use
             if name in sizes.parts and (name == reference or sizes.parts[name].kind != "variant")}
    baseline = plan_placement(sizes, list(alone), budget, alone)
    return replace(plan, reference_per_image=baseline.per_image)


Kept = tuple[dict[str, list[int]], Tensors]  # per part, the indices of its blocks kept; every tensor on the GPU


def _fill_part_by_part(parts: list[Part], resident: Tensors, room: int, reads: dict[str, int],
                       by_reads: bool = True) -> Kept:
    """The blocks kept on the GPU part by part: the most-read part first (``by_reads``), then the one whose blocks
    cost the fewest bytes, encoders last; a block that does not fit is passed over for later ones."""
    kept: dict[str, list[int]] = {part.name: [] for part in parts}

    def marginal(part: Part) -> int:
        return sum({t: s for block in part.blocks for t, s in block.items() if t not in resident}.values())

    for part in sorted(parts, key=lambda p: (-reads[p.name] if by_reads else 0, p.kind == "encoder", marginal(p))):
        for index, block in enumerate(part.blocks):
            cost = sum(size for tensor, size in block.items() if tensor not in resident)
            if cost <= room:
                room -= cost
                resident.update(block)
                kept[part.name].append(index)
    return kept, resident


def _fill_by_worth(parts: list[Part], resident: Tensors, room: int, reads: dict[str, int]) -> Kept:
    """The blocks kept on the GPU, chosen greedily by the bytes of streaming an image saves per byte of room: a
    tensor is worth its size times the calls that read it (the sum over the parts that hold it: a tensor a
    quantized variant shares with the reference saves streaming for both)."""
    weight: dict[int, int] = {}
    for part in parts:
        for tensor in {t for block in part.blocks for t in block}:
            weight[tensor] = weight.get(tensor, 0) + reads[part.name]

    def cost_and_worth(block: Tensors) -> tuple[int, float]:
        cost = sum(size for tensor, size in block.items() if tensor not in resident)
        saved = sum(size * weight[tensor] for tensor, size in block.items() if tensor not in resident)
        return cost, saved / cost if cost else math.inf

    rank = {part.name: i for i, part in enumerate(parts)}
    heap = [(-cost_and_worth(block)[1], part.kind == "encoder", rank[part.name], index, part.name)
            for part in parts for index, block in enumerate(part.blocks)]
    heapq.heapify(heap)
    by_name = {part.name: part for part in parts}
    kept: dict[str, list[int]] = {part.name: [] for part in parts}
    passed_over: list[tuple[str, int]] = []
    while heap:
        worth, encoder, order, index, name = heapq.heappop(heap)
        block = by_name[name].blocks[index]
        cost, now = cost_and_worth(block)
        if now < -worth - 1e-9:  # shared tensors became resident since it was ranked: rank it again
            heapq.heappush(heap, (-now, encoder, order, index, name))
            continue
        if cost > room:
            passed_over.append((name, index))
            continue
        room -= cost
        resident.update(block)
        kept[name].append(index)
    for name, index in passed_over:  # what became cheaper once the tensors it shares were kept
        cost, _ = cost_and_worth(by_name[name].blocks[index])
        if cost <= room:
            room -= cost
            resident.update(by_name[name].blocks[index])
            kept[name].append(index)
    return {name: sorted(indices) for name, indices in kept.items()}, resident


def _all_tensors(parts: list[Part]) -> Tensors:
    """Every tensor of ``parts``, fixed and in blocks (a shared one once)."""
    tensors: Tensors = {}
    for part in parts:
        tensors.update(part.fixed)
        for block in part.blocks:
            tensors.update(block)
    return tensors


def _everything(parts: list[Part], working: int) -> Plan:
    resident = _all_tensors(parts)
    total = sum(resident.values())
    return Plan(None, {p.name: tuple(range(len(p.blocks))) for p in parts}, {p.name: 0 for p in parts},
                total + working, total, {p.name: len(p.blocks) for p in parts}, frozenset(resident))


def _plan(parts: list[Part], filled: Kept, buffers: int, working: int, budget: int, reads: dict[str, int]) -> Plan:
    kept, resident = filled
    streamed = {}
    for part in parts:
        held = set(kept[part.name])
        streamed[part.name] = sum(s for i, b in enumerate(part.blocks) if i not in held for t, s in b.items()
                                  if t not in resident)
    needs_buffers = buffers if any(streamed.values()) else 0
    total = sum(resident.values())
    return Plan(budget, {name: tuple(indices) for name, indices in kept.items()}, streamed,
                total + needs_buffers + working, total, {p.name: len(p.blocks) for p in parts}, frozenset(resident),
                pinned=frozenset(p.name for p in parts if p.kind != "encoder" and reads[p.name] > 0))
