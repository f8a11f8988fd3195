"""The placer: carries a placement plan out on one pipeline, and keeps it true as variants are built.

It weighs the pipeline's parts from their live tensors (a variant not built yet is estimated from the reference and
its precision's bits), plans with ``placement.plan_placement``, and moves tensors: streamed blocks to pinned host
memory (``streaming.BlockStreamer``), everything else onto the GPU. It plans again when the schedule's precisions
change, when a variant is built (its real size known), or when a call's working memory turned out larger than
estimated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn

from tmpdiff.memory.meter import GIB
from tmpdiff.memory.placement import Part, PartKind, Plan, Sizes, plan_beside_reference
from tmpdiff.memory.streaming import BlockStreamer, checkpoint_origins
from tmpdiff.steps.precisions import Kind, get_precision
from tmpdiff.variants.bank import VariantBank
from tmpdiff.variants.copies import find_blocks, inner_tensor_names, owned_tensors, tensor_bytes

__all__ = ["ENCODERS", "Placer", "estimate_working"]

ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3", "image_encoder")
SLACK = 512 << 20  # the allocator's own slack and the CUDA context's share of a cap
CALIBRATION_MARGIN = SLACK  # beside a measured working memory (allocated bytes; the cap counts reserved ones)


def estimate_working(pipe: Any, size: int, frames: int = 0) -> int:
    """Bytes one pipeline call needs beyond its weights: the denoiser's activations (about 24 live hidden-sized
    tensors over its tokens), the VAE's decoding at full resolution (about 6 live tensors of its widest channel
    count), and the allocator's slack."""
    denoiser = next((m for n in ("transformer", "unet") if isinstance(m := getattr(pipe, n, None), nn.Module)), None)
    config = getattr(denoiser, "config", None)
    heads, head_size = getattr(config, "num_attention_heads", 16), getattr(config, "attention_head_dim", 64)
    hidden = int(heads or 16) * int(head_size or 64)
    length = max(frames, 1)
    tokens = (size // 16) ** 2 * max(length // 4, 1) + 512
    activations = 24 * tokens * hidden * 2
    vae = getattr(pipe, "vae", None)
    channels = max(getattr(getattr(vae, "config", None), "block_out_channels", None) or (128,))
    decode = 6 * size * size * min(channels, 256) * 2 * max(length // 4, 1)
    return activations + decode + SLACK


class VariantKey(NamedTuple):
    """A denoiser variant's part: which denoiser of the pipeline (``transformer``, ``unet``...) and precision."""

    owner: str
    precision: str


class Placer:
    """Places one pipeline's parts on ``device`` within ``budget`` bytes (None: everything on the device)."""

    def __init__(self, pipe: Any, device: torch.device, budget: int | None, working: int = 0,
                 host: int | None = None) -> None:
        from tmpdiff.switching.switch import denoisers_of
        from tmpdiff.variants.bank import bank_for

        self.pipe, self.device, self.budget = pipe, device, budget
        self.host = host  # page-locked host bytes the streamed blocks may hold (None: what the system has)
        self.banks = {name: bank_for(module) for name, module in denoisers_of(pipe)}
        for bank in self.banks.values():
            bank.settle_in(device, self)
        self.encoders = {n: m for n in ENCODERS if isinstance(m := getattr(pipe, n, None), nn.Module)}
        self.vae = getattr(pipe, "vae", None)
        # the checkpoint's memory-mapped values, taken before anything moves: pageable blocks stream from them
        self.origins = checkpoint_origins([*(bank.reference for bank in self.banks.values()),
                                           *self.encoders.values()])
        self.working = working
        self._estimated = working  # the last estimate a call came with (estimate_working)
        self._measured: dict[int, int] = {}  # per estimate, the working memory calls with it were measured to need
        self.plan: Plan | None = None
        self.streamers: dict[str, BlockStreamer] = {}
        self._in_use: tuple[str, ...] = ()
        self._schedule: tuple[str, ...] = ()
        self._reads: dict[str, int] = {}  # per part, the calls that read it for one image (see _reads_of)
        self._steps = 0  # the schedule's length: the reference schedule's calls
        self._planned: tuple[Any, ...] | None = None
        self._sizes: Sizes | None = None
        self._variant_keys: dict[str, VariantKey] = {}  # a variant part's name → whose and which precision
        self._weighed: dict[int, Part] = {}  # parts weighed so far, by module (tensors move, they do not change)

    # --- planning -------------------------------------------------------------------------------
    def prepare(self, precisions: Sequence[str], working: int) -> Plan:
        """Before a pipeline call: the plan for a schedule of ``precisions`` (and the parts every call uses),
        carried out; nothing moves when nothing changed."""
        self._estimated = working
        # calibrated: what calls of this estimate were measured to need (lower or higher), else the estimate
        self.working = self._measured.get(working, working)
        self._schedule = tuple(dict.fromkeys(p for p in precisions if get_precision(p).computes))
        self._in_use = tuple(self._parts_for())
        self._reads = self._reads_of(precisions)
        self._steps = len(precisions)
        return self._replan()

    def _reads_of(self, precisions: Sequence[str]) -> dict[str, int]:
        """How many times each part runs for one image of the schedule: a variant at each of its steps, every
        other part in use once (an encoder runs once a prompt), a variant the schedule does not use never."""
        steps = Counter(p for p in precisions if get_precision(p).computes)
        reads = dict.fromkeys(self._in_use, 1)
        for owner in self.banks:
            for precision in self._precisions_in(owner):
                reads[self._variant_name(owner, precision)] = steps.get(precision, 0)
        return reads

    def set_budget(self, budget: int | None) -> None:
        """A new budget (bytes; None: everything on the device), planned for at the next call."""
        self.budget = budget

    def set_host(self, host: int | None) -> None:
        """A new host budget (bytes; None: what the system has available at each plan)."""
        self.host = host

    def host_room(self) -> int | None:
        """Page-locked bytes a plan may use now: the host budget, or what the system has available plus the blocks
        this placer already holds (a new plan replaces them)."""
        if self.host is not None:
            return self.host
        from tmpdiff.memory.budget import available_host_bytes

        available = available_host_bytes()
        if available is None or self.device.type != "cuda":
            return None  # checkpoint pages pinned in place still count as available (they stay on the page lists)
        return available + sum(streamer.pinned_copy_bytes() for streamer in self.streamers.values())

    def ran_out(self) -> None:
        """A call ran out of memory under the current plan: the next plan leaves more working room."""
        if self.plan is not None:
            self.working = int(self.working * 1.25) + GIB // 2
            self._measured[self._estimated] = self.working

    def variant_built(self) -> None:
        """A variant was just built: its real size is known; plan again (inside the call that built it)."""
        self._weighed.clear()
        if self._in_use:
            self._replan()

    def observed(self, peak: int, building: bool = False) -> None:
        """After a call: its peak calibrates the working memory planned for calls of the same estimate from the next
        plan on (the largest measured, plus a margin): more where the estimate was short, less where it was
        generous (FLUX at 1024^2 on an H100: about 2.8 GiB less), so a budget's bytes go to resident blocks. A call
        that built a variant only raises the working memory of the plan in place."""
        if self.plan is not None:
            measured = max(peak - self.plan.resident_bytes, 0) + CALIBRATION_MARGIN
            self.working = max(self.working, measured)  # the plan in place keeps its room until the next one
            if not building:  # a call that built a variant peaks with the build's temporaries: no calibration
                self._measured[self._estimated] = max(self._measured.get(self._estimated, 0), measured)

    def streamed_precisions(self) -> frozenset[str]:
        """Precisions whose variant streams in the current plan (they run eager)."""
        if self.plan is None:
            return frozenset()
        return frozenset(self._variant_keys[name].precision for name in self.plan.streamed_bytes
                         if self.plan.streams(name) and name in self._variant_keys)

    def _replan(self) -> Plan:
        sizes = self.sizes()
        key = (self._in_use, self.budget, self.host, self.working, self._steps, tuple(sorted(self._reads.items())),
               tuple(sorted((n, p.nbytes) for n, p in sizes.parts.items())))
        if self.plan is not None and key == self._planned:
            return self.plan
        owner, bank = next(iter(self.banks.items()))
        reference = self._variant_name(owner, _reference_name(bank))
        plan = plan_beside_reference(sizes, self._in_use, self.budget, self._reads, reference, self._steps,
                                     self.host_room())
        self._apply(plan, sizes)
        self.plan, self._planned, self._sizes = plan, key, sizes
        return plan

    def pinned_bytes(self) -> int:
        """Page-locked host memory holding the blocks that stream now."""
        return sum(streamer.pinned_bytes() for streamer in self.streamers.values())

    def resident_by_part(self) -> dict[str, int]:
        """Bytes each part in use has on the device under the current plan (a shared tensor counts in each)."""
        if self.plan is None or self._sizes is None:
            return {}
        kept = self.plan.kept
        return {name: sum(size for tensors in (part.fixed, *part.blocks) for t, size in tensors.items() if t in kept)
                for name, part in self._sizes.parts.items() if name in self.plan.resident}

    def sizes(self) -> Sizes:
        parts: dict[str, Part] = {}
        for owner, bank in self.banks.items():
            for precision in self._precisions_in(owner):
                name = self._variant_name(owner, precision)
                module = self._variant(bank, precision)
                parts[name] = self._weigh(name, "variant", module) if module is not None else \
                    self._estimate(bank, name, precision)
        for name, encoder in self.encoders.items():
            parts[name] = self._weigh(name, "encoder", encoder)
        if isinstance(self.vae, nn.Module):
            parts["vae"] = Part("vae", "vae", _tensors(self.vae))
        return Sizes(parts, self.working)

    def _weigh(self, name: str, kind: PartKind, module: nn.Module) -> Part:
        if id(module) not in self._weighed:
            self._weighed[id(module)] = _part(name, kind, module)
        return self._weighed[id(module)]

    # --- carrying it out -------------------------------------------------------------------------
    def _apply(self, plan: Plan, sizes: Sizes) -> None:
        """Moves tensors as ``plan`` says, freeing before filling: blocks that now stream leave the device first;
        then the tensors resident parts share, the resident blocks and every other kept tensor come onto it."""
        kept, moved = set(plan.kept), False
        for name in plan.resident:
            streamer = self._streamer(name)
            if streamer is not None:
                indices = [i for i in range(len(sizes.parts[name].blocks)) if i not in plan.resident[name]]
                moved |= bool(set(indices) - set(streamer.streamed))
                streamer.stream(indices, pageable=name not in plan.pinned)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        for name in plan.resident:
            streamer = self.streamers.get(name)
            if streamer is not None:
                streamer.set_keep(kept & _ids(streamer))
                moved |= bool(set(plan.resident[name]) & set(streamer.streamed))
                streamer.make_resident(plan.resident[name])
            _to_device(self._module(name), kept, self.device)
        if moved:  # captured CUDA graphs point at tensors that moved
            for bank in self.banks.values():
                bank.tensors_moved()

    def _streamer(self, name: str) -> BlockStreamer | None:
        if name not in self.streamers:
            module = self._module(name)
            blocks = find_blocks(module) if module is not None else []
            if not blocks:
                return None
            self.streamers[name] = BlockStreamer(blocks, self.device, origins=self.origins)
        return self.streamers[name]

    @contextmanager
    def reference_onloaded(self, bank: VariantBank, index: int) -> Iterator[None]:
        """Block ``index`` of ``bank``'s reference on the device for the block (a variant quantized from it)."""
        owner = next(n for n, b in self.banks.items() if b is bank)
        streamer = self.streamers.get(self._variant_name(owner, _reference_name(bank)))
        with streamer.onloaded(index) if streamer is not None else _nothing():
            yield

    # --- the pipeline's parts ----------------------------------------------------------------------
    def _parts_for(self) -> list[str]:
        """The schedule's variants first, then the encoders and the VAE, then every other variant built (the first
        to stream when the budget is tight)."""
        names = [self._variant_name(owner, p) for owner in self.banks for p in self._schedule]
        others = [self._variant_name(owner, p) for owner in self.banks for p in self._precisions_in(owner)]
        return list(dict.fromkeys([*names, *self.encoders, "vae", *others]))

    def _precisions_in(self, owner: str) -> list[str]:
        """The precisions this denoiser has parts for: the reference, the built variants, the schedule's."""
        bank = self.banks[owner]
        return list(dict.fromkeys([_reference_name(bank), *(name for name, _ in bank.variants), *self._schedule]))

    def _variant_name(self, owner: str, precision: str) -> str:
        """The part's name in plans and memory cards (the precision; ``owner/precision`` with two denoisers), kept
        with its typed key so nothing parses it back."""
        name = precision if len(self.banks) == 1 else f"{owner}/{precision}"
        self._variant_keys[name] = VariantKey(owner, precision)
        return name

    def _module(self, name: str) -> nn.Module | None:
        if name in self.encoders:
            return self.encoders[name]
        if name == "vae":
            return self.vae if isinstance(self.vae, nn.Module) else None
        key = self._variant_keys[name]
        return self._variant(self.banks[key.owner], key.precision)

    @staticmethod
    def _variant(bank: Any, precision: str) -> nn.Module | None:
        """The module that holds a precision's tensors: the reference, or its eager variant (a compiled one shares
        them)."""
        from tmpdiff.variants.bank import Mode

        if precision == _reference_name(bank):
            return bank.reference
        return bank.variants.get((precision, Mode.EAGER))

    def _estimate(self, bank: Any, name: str, precision: str) -> Part:
        """A variant not built yet, from its reference: quantized weights at the precision's bits (every other
        tensor shared with the reference), a cast at its dtype's bits."""
        entry = get_precision(precision)
        reference = self._weigh(name, "variant", bank.reference)
        ratio = entry.bits / (torch.finfo(bank.reference_dtype).bits)
        takes = bank.layer_filter(entry) if entry.kind.quantizes_linears else None
        quantized = {id(m.weight) for n, m in bank.reference.named_modules() if takes is not None and takes(m, n)}

        def scaled(tensors: dict[int, int]) -> dict[int, int]:
            if takes is None:  # a cast copies everything
                return {-hash((name, t)): int(s * ratio) for t, s in tensors.items()}
            return {(-hash((name, t)) if t in quantized else t): (int(s * ratio) if t in quantized else s)
                    for t, s in tensors.items()}

        return Part(name, "variant", scaled(reference.fixed), tuple(scaled(b) for b in reference.blocks))


def _reference_name(bank: Any) -> str:
    from tmpdiff.steps.precisions import PRECISIONS

    return next(n for n, p in PRECISIONS.items() if p.kind is Kind.DTYPE and p.dtype == bank.reference_dtype)


def _tensors(module: nn.Module, skip: set[int] | None = None) -> dict[int, int]:
    return {id(tensor): tensor_bytes(tensor) for _, _, tensor in owned_tensors(module, skip)}


def _part(name: str, kind: PartKind, module: nn.Module) -> Part:
    blocks = find_blocks(module)
    inside = [_tensors(block) for block in blocks]
    held = {t for block in inside for t in block}
    return Part(name, kind, _tensors(module, skip=held), tuple(inside))


def _ids(streamer: BlockStreamer) -> set[int]:
    return {id(tensor) for block in streamer.blocks for _, _, tensor in owned_tensors(block)}


def _to_device(module: nn.Module | None, only: set[int] | None, device: torch.device) -> None:
    """Moves ``module``'s tensors (those whose ids are in ``only``; None: all) onto ``device`` in place."""
    if module is None:
        return
    for _, _, tensor in owned_tensors(module):
        if only is None or id(tensor) in only:
            _move(tensor, device)


def _move(tensor: torch.Tensor, device: torch.device) -> None:
    names = inner_tensor_names(tensor)
    if names is None:
        if tensor.device != device:
            tensor.data = tensor.data.to(device)
        return
    for inner in names:
        value = getattr(tensor, inner)
        if value.device != device:
            setattr(tensor, inner, value.to(device))


@contextmanager
def _nothing() -> Iterator[None]:
    yield
