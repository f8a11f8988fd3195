"""Blocks that live in pinned host memory and come onto the GPU only while they run.

A ``BlockStreamer`` holds some repeated blocks of one module (a denoiser variant, a text encoder) off the GPU:
their own tensors are copied once into one host buffer per block, of exactly their bytes and page-locked in place
(``HostBuffer``; opt-in, ``TMPDIFF_PIN_IN_PLACE=1``: a checkpoint's memory-mapped pages page-locked where they
lie, ``MappedPin``); just before a block runs its tensors are copied to the GPU on a side stream (the next streamed
block is prefetched while this one computes), and after it runs its GPU copies are released (``record_stream``
keeps the allocator from reusing them before the compute stream is done).

Why not diffusers' group offloading (the stock way, and this project's baseline): a tmpdiff variant shares every
tensor it does not quantize with the reference (``variants.bank``), so streaming the reference must leave those
shared tensors on the GPU for the resident variants that read them (``keep_on_device``), and a plan moves blocks
between resident and streamed as it learns sizes (``make_resident`` / ``stream``). Tensors are moved by swapping
``.data`` (plain tensors) or a tensor subclass's inner tensors (``__tensor_flatten__``: torchao's quantized
weights), so the module objects, and every reference to their parameters, stay as they are.

Why plain torch hooks here while the switch (``switching.switch``) uses diffusers' ``HookRegistry``: the switch's
hooks belong to the stock pipeline's denoiser and must order with diffusers' own hooks (caching, offloading) on
that one module, which is what the registry is for. A streamer's hooks sit on repeated blocks of every variant,
copies included: a copy of a streamed block must drop them (``copies.strip_streaming_hooks``, by the mark this
module sets) and a compiled block must not trace them. The registry replaces a module's ``forward`` and travels
with ``copy.copy``, which would carry the reference's streaming into each variant built from it.

Numerics are untouched: a streamed block computes with the same values, so an image is bit for bit the resident
one in eager mode (streamed blocks always run eager).
"""

from __future__ import annotations

import bisect
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tmpdiff.variants.copies import STREAMING_HOOK, inner_tensor_names, owned_tensors, tensor_bytes, tensors_of

__all__ = ["BlockStreamer"]


def _streaming_hook(hook: Any) -> Any:
    """Marks a hook as a streamer's: a copy of a streamed block drops it (``copies.strip_streaming_hooks``)."""
    setattr(hook, STREAMING_HOOK, True)
    return hook


ALIGN = 512  # every tensor in a block's host buffer starts at a multiple of this (any dtype's alignment)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _span(tensor: torch.Tensor) -> int:
    """Elements a tensor's storage must hold from its offset: its largest index plus one (strides kept)."""
    if tensor.numel() == 0:
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True))


def _dense(tensor: torch.Tensor) -> bool:
    """Whether no two elements share memory and none is skipped (a permutation of a contiguous tensor)."""
    return _span(tensor) == tensor.numel()


class HostBuffer:
    """One streamed block's host copies in one buffer of exactly their bytes (each aligned to ``ALIGN``),
    page-locked in place on CUDA (``cudaHostRegister``) so copies from it run asynchronously.

    Why not ``Tensor.pin_memory()`` per tensor: PyTorch's caching host allocator rounds every pinned allocation up
    to a power of two (up to 2x the bytes, about 1.67x for a FLUX block's tensors) and keeps freed ones cached;
    registering an ordinary allocation pins exactly its bytes and gives them back to the system when freed.
    """

    def __init__(self, sources: Sequence[torch.Tensor], pinned: bool) -> None:
        sources = [t if _dense(t) else t.contiguous() for t in sources]  # an expanded tensor: its values, once each
        spans = [_aligned(_span(t) * t.element_size()) for t in sources]
        self.nbytes = sum(spans)
        self.memory = torch.empty(self.nbytes, dtype=torch.uint8)
        self._unpin: Any = None
        if pinned and self.nbytes:
            error = int(torch.cuda.cudart().cudaHostRegister(self.memory.data_ptr(), self.nbytes, 0))
            if error != 0:
                raise RuntimeError(f"could not page-lock {self.nbytes} bytes of host memory (cudaError {error}): the "
                                   "system's locked-memory limit (ulimit -l) may be too low")
            # unpinned before its memory can be freed, also when dropped without free() (the finalizer holds it)
            self._unpin = weakref.finalize(self, _unregister, self.memory)
            self._unpin.atexit = False  # the process's exit frees it
        self.copies: list[torch.Tensor] = []
        offset = 0
        for source, span in zip(sources, spans, strict=True):
            flat = self.memory[offset:offset + span].view(source.dtype)
            copy = flat.as_strided(source.shape, source.stride())
            copy.copy_(source.detach())
            self.copies.append(copy)
            offset += span

    @property
    def pinned(self) -> bool:
        return self._unpin is not None and self._unpin.alive

    def free(self) -> None:
        """Unpins the buffer (the caller has made sure no copy from it is in flight) and drops it."""
        if self._unpin is not None:
            self._unpin()
        self.copies = []
        self.memory = torch.empty(0, dtype=torch.uint8)


def checkpoint_origins(modules: Iterable[nn.Module]) -> dict[int, torch.Tensor]:
    """Per tensor id, the host tensor holding its values where they are memory-mapped from a file (a checkpoint
    loaded by ``from_pretrained``): a streamed block can point back at them instead of copying, and the kernel may
    drop and read those pages again. Empty where the system does not say (no ``/proc/self/maps``)."""
    mapped = _file_mappings()
    starts = [start for start, _ in mapped]
    origins: dict[int, torch.Tensor] = {}
    for module in modules:
        for _, _, tensor in owned_tensors(module):
            if inner_tensor_names(tensor) is not None or tensor.device.type != "cpu" or not tensor.numel():
                continue
            at = bisect.bisect_right(starts, tensor.data_ptr()) - 1
            if at >= 0 and tensor.data_ptr() + tensor_bytes(tensor) <= mapped[at][1]:
                origins[id(tensor)] = tensor.data
    return origins


def _file_mappings() -> list[tuple[int, int]]:
    """The process's memory mappings of regular files, as sorted (start, end) addresses."""
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/") and not fields[5].startswith("/dev/"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return sorted(ranges)


def _unregister(memory: torch.Tensor) -> None:
    torch.cuda.cudart().cudaHostUnregister(memory.data_ptr())


PAGE = 4096
HOST_REGISTER_READ_ONLY = 8  # cudaHostRegisterReadOnly: pin without write access, so no copy-on-write copy is made


_REGISTERED: dict[int, int] = {}  # checkpoint pages registered in place in this process: start -> end


class MappedPin:
    """One streamed block's tensors page-locked where their checkpoint maps them, without a copy.

    A checkpoint loaded by ``from_pretrained`` is mapped copy-on-write; registering its pages read-only with CUDA
    pins the file's own pages (no copy-on-write copy), and copies from them run asynchronously. A block registers
    the pages its run of tensors covers; neighbouring blocks share a boundary page and CUDA refuses overlapping
    registrations (and stages a copy spanning two), so a range stops at pages registered already, and a tensor not
    wholly inside one registered range (at most one at each end of a run: safetensors orders tensors by name, so
    mostly a bias) is the caller's to copy (``holds``). Unregistered by ``free`` or when dropped (a finalizer,
    which also keeps the mapping alive until then)."""

    def __init__(self, origins: Sequence[torch.Tensor]) -> None:
        self.ranges: list[tuple[int, int]] = []
        for start, end in _runs(origins):
            start, end = _clipped(start // PAGE * PAGE, -(-end // PAGE) * PAGE)
            if start < end and any(_within(t, start, end) for t in origins) and int(torch.cuda.cudart(
                    ).cudaHostRegister(start, end - start, HOST_REGISTER_READ_ONLY)) == 0:
                _REGISTERED[start] = end
                self.ranges.append((start, end))
        self.nbytes = sum(end - start for start, end in self.ranges)
        self._unpin = weakref.finalize(self, _unregister_ranges, [s for s, _ in self.ranges], list(origins))
        self._unpin.atexit = False

    def holds(self, tensor: torch.Tensor) -> bool:
        return any(_within(tensor, start, end) for start, end in self.ranges)

    def free(self) -> None:
        self._unpin()


def _within(tensor: torch.Tensor, start: int, end: int) -> bool:
    return start <= tensor.data_ptr() and tensor.data_ptr() + tensor_bytes(tensor) <= end


def _clipped(start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` less the registered pages at its ends; empty if a registration lies inside it."""
    for begun, ended in _REGISTERED.items():
        if begun <= start < ended:
            start = ended
        if begun < end <= ended:
            end = begun
    if any(start < begun < end for begun in _REGISTERED):
        return start, start
    return start, end


def _runs(tensors: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """The address ranges the tensors fill, neighbours less than a page apart merged (a block's tensors lie together
    in a safetensors file: it orders them by name)."""
    runs: list[list[int]] = []
    for start, end in sorted((t.data_ptr(), t.data_ptr() + tensor_bytes(t)) for t in tensors):
        if runs and start - runs[-1][1] < PAGE:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    return [(start, end) for start, end in runs]


def _unregister_ranges(starts: list[int], _mappings_kept_alive: list[torch.Tensor]) -> None:
    for start in starts:
        if _REGISTERED.pop(start, None) is not None:
            torch.cuda.cudart().cudaHostUnregister(start)


@dataclass
class _Slot:
    """One tensor a streamed block owns: where it hangs, and its host copies (a subclass: one per inner tensor)."""

    owner: nn.Module
    name: str
    tensor: torch.Tensor
    host: dict[str, torch.Tensor] = field(default_factory=dict)  # "" for a plain tensor's data

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.host.values())

    def sources(self) -> dict[str, torch.Tensor]:
        """What the host copies are made of: a plain tensor's data, or a subclass's inner tensors."""
        inner = inner_tensor_names(self.tensor)
        return {"": self.tensor.data} if inner is None else {n: getattr(self.tensor, n) for n in inner}

    def release(self) -> None:
        """Points the tensor at its host copies (its device memory is freed when nothing else holds it)."""
        self._assign(self.host)

    def onload(self, device: torch.device, non_blocking: bool) -> list[torch.Tensor]:
        moved = {key: t.to(device, non_blocking=non_blocking, copy=True) for key, t in self.host.items()}
        self._assign(moved)
        return list(moved.values())

    def _assign(self, values: dict[str, torch.Tensor]) -> None:
        if "" in values:
            self.tensor.data = values[""]
        else:
            for key, value in values.items():
                setattr(self.tensor, key, value)


@dataclass
class _Block:
    module: nn.Module
    slots: list[_Slot] = field(default_factory=list)
    buffer: HostBuffer | None = None  # the slots' copied host tensors, in one (pinned) buffer
    pin: MappedPin | None = None  # the slots' checkpoint pages, page-locked where they are mapped
    pageable: bool = False  # whether it streams from pageable memory (never page-locked)
    on_device: list[torch.Tensor] = field(default_factory=list)  # the copies in use (None: offloaded)
    ready: Any = None  # the copy stream's event once its onload was issued
    hooks: list[Any] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(slot.nbytes for slot in self.slots)

    def to_host(self, pinned: bool, pageable: bool = False, origins: Mapping[int, torch.Tensor] | None = None,
                in_place: bool = False) -> None:
        """Points every slot at a host copy of its tensors. Page-locked (``pinned``) or not, they are copied into one
        host buffer; with ``pageable`` a tensor with an ``origin`` (its checkpoint's memory-mapped values: weights
        never change) or already in host memory outside this block's buffer streams from where it is, uncopied;
        with ``in_place`` (and ``pinned``) origins are page-locked where they lie (``MappedPin``), the rest copied."""
        keyed = [(slot, key, source) for slot in self.slots for key, source in slot.sources().items()]
        old, old_pin, copied, mapped = self.buffer, self.pin, [], []
        for slot, key, source in keyed:
            origin = (origins or {}).get(id(slot.tensor)) if key == "" else None
            if origin is not None and origin.shape == source.shape and origin.dtype == source.dtype:
                mapped.append((slot, key, origin))
            elif pageable and source.device.type == "cpu" and old is None:
                slot.host[key] = source
            else:
                copied.append((slot, key, source))
        self.pin = MappedPin([o for _, _, o in mapped]) if in_place and pinned and not pageable and mapped else None
        if mapped and not pageable:  # page-locked mode: what is not pinned where it lies is copied
            held = []
            for slot, key, origin in mapped:
                if self.pin is not None and self.pin.holds(origin):
                    held.append((slot, key, origin))
                else:
                    copied.append((slot, key, slot.sources()[key]))
            mapped = held
            if self.pin is not None and not self.pin.ranges:
                self.pin.free()
                self.pin = None
        for slot, key, origin in mapped:
            slot.host[key] = origin
        self.buffer = HostBuffer([source for _, _, source in copied], pinned and not pageable) if copied else None
        for (slot, key, _), copy in zip(copied, self.buffer.copies if self.buffer else [], strict=True):
            slot.host[key] = copy
        self.pageable = pageable
        for slot in self.slots:
            slot.release()
        if old is not None:
            old.free()
        if old_pin is not None:
            old_pin.free()

    def free_host(self) -> None:
        for slot in self.slots:
            slot.host.clear()
        if self.buffer is not None:
            self.buffer.free()
            self.buffer = None
        if self.pin is not None:
            self.pin.free()
            self.pin = None


class BlockStreamer:
    """Streams some of ``blocks`` (blocks of one module, in the order they run) between pinned host memory and
    ``device``. Tensors whose ids are in ``keep`` are never moved (shared with a variant that stays resident).

    A block streamed ``pageable`` (a text encoder, run once a prompt; a variant the schedule does not read) is never
    page-locked: its tensors stream from their ``origins`` (the checkpoint's memory-mapped values, which the kernel
    may drop and read again) or from where they are in host memory, else from an ordinary host buffer; its copies to
    the GPU are slower. A block streamed again in the other mode moves between the two without the GPU.

    Example:
        >>> streamer = BlockStreamer(find_blocks(pipe.transformer), torch.device("cuda"))  # doctest: +SKIP
        >>> streamer.stream(range(10, 57))  # blocks 10.. now live on the host
    """

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device, keep: Iterable[int] = (),
                 prefetch: int = 1, origins: Mapping[int, torch.Tensor] | None = None) -> None:
        self.blocks = list(blocks)
        self.device = device
        self.keep = set(keep)
        self.prefetch = prefetch
        self.cuda = device.type == "cuda"
        self.page_lock = self.cuda  # host copies page-locked (CUDA's asynchronous copies need it)
        # Checkpoint pages page-locked where they lie instead of copied (MappedPin): opt-in until it has run on a GPU
        self.pin_in_place = os.environ.get("TMPDIFF_PIN_IN_PLACE") == "1"
        self.origins = origins or {}
        self._streamed: dict[int, _Block] = {}
        self._copies = torch.cuda.Stream(device) if self.cuda else None
        self.onloads = 0  # blocks brought onto the device so far

    # --- what is streamed ---------------------------------------------------------------
    @property
    def streamed(self) -> list[int]:
        return sorted(self._streamed)

    def streamed_bytes(self) -> int:
        """Bytes copied to the GPU each time every streamed block runs once."""
        return sum(block.nbytes for block in self._streamed.values())

    def pinned_bytes(self) -> int:
        """Page-locked host bytes its streamed blocks hold: copies, and checkpoint pages pinned where they lie."""
        return self.pinned_copy_bytes() + sum(block.pin.nbytes for block in self._streamed.values()
                                              if block.pin is not None)

    def pinned_copy_bytes(self) -> int:
        """Page-locked host bytes its streamed blocks hold in buffers of their own (beyond the checkpoint's pages)."""
        return sum(block.buffer.nbytes for block in self._streamed.values()
                   if block.buffer is not None and block.buffer.pinned)

    def own_bytes(self, index: int) -> int:
        """What block ``index`` holds beyond the tensors kept on the device."""
        return sum(tensor_bytes(t) for _, _, t in self._own_tensors(self.blocks[index]))

    def stream(self, indices: Iterable[int], pageable: bool = False) -> None:
        """Moves these blocks' own tensors to host memory (page-locked unless ``pageable``); they come back just for
        the time they run. A block already streamed in the other mode changes mode."""
        for index in indices:
            if index in self._streamed:
                if self._streamed[index].pageable != pageable:
                    if self._copies is not None:  # no copy from its current host buffer may still be in flight
                        self._copies.synchronize()
                    self._streamed[index].to_host(self.page_lock, pageable, self.origins, self.pin_in_place)
                continue
            block = _Block(self.blocks[index])
            block.slots = [_Slot(owner, name, tensor) for owner, name, tensor in self._own_tensors(block.module)]
            block.to_host(self.page_lock, pageable, self.origins, self.pin_in_place)
            block.hooks = [block.module.register_forward_pre_hook(self._before(index)),
                           block.module.register_forward_hook(self._after(index))]
            self._streamed[index] = block
        if self.cuda:
            torch.cuda.empty_cache()

    def make_resident(self, indices: Iterable[int]) -> None:
        """Brings these blocks back onto the device for good."""
        for index in list(indices):
            block = self._streamed.pop(index, None)
            if block is None:
                continue
            for hook in block.hooks:
                hook.remove()
            if self._copies is not None:  # no copy from its host buffer may still be in flight when it is freed
                self._copies.synchronize()
            for slot in block.slots:
                slot.onload(self.device, non_blocking=False)
            block.free_host()

    def set_keep(self, tensor_ids: Iterable[int]) -> None:
        """From now on exactly these tensors (shared with a resident variant) stay on the device: a streamed block
        holding one newly kept, or one no longer kept, is brought in and streamed again without it (kept tensors
        still on the host are the caller's to move)."""
        keep = set(tensor_ids)
        changed = keep ^ self.keep
        self.keep = keep
        for index, block in list(self._streamed.items()):
            if any(id(t) in changed for t in tensors_of(block.module)):
                self.make_resident([index])
                self.stream([index], pageable=block.pageable)

    def remove(self) -> None:
        """Every block back on the device, the hooks gone."""
        self.make_resident(list(self._streamed))

    @contextmanager
    def onloaded(self, index: int) -> Iterator[None]:
        """Block ``index`` on the device for the block (building a variant from it, say)."""
        block = self._streamed.get(index)
        if block is None:
            yield
            return
        self._issue(block)
        self._wait(block)
        try:
            yield
        finally:
            self._release(block)

    # --- while the module runs --------------------------------------------------------------
    def _own_tensors(self, module: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
        return list(owned_tensors(module, skip=self.keep))

    def _before(self, index: int) -> Any:
        @_streaming_hook
        def hook(module: nn.Module, _args: Any) -> None:
            if module is not self.blocks[index]:  # a copy of this block (another variant): not streamed here
                return
            block = self._streamed[index]
            if not block.on_device:
                self._issue(block)
            self._wait(block)
            for ahead in self._next(index):
                if not self._streamed[ahead].on_device:
                    self._issue(self._streamed[ahead])
        return hook

    def _after(self, index: int) -> Any:
        @_streaming_hook
        def hook(module: nn.Module, _args: Any, output: Any) -> None:
            if module is self.blocks[index] and index in self._streamed:
                self._release(self._streamed[index])
        return hook

    def _next(self, index: int) -> list[int]:
        """The streamed blocks that run next in this call (none past the last: the next call may be another
        variant's)."""
        later = [i for i in sorted(self._streamed) if i > index]
        return later[: self.prefetch]

    def _issue(self, block: _Block) -> None:
        """Starts copying the block's tensors to the device (on the side stream on CUDA)."""
        self.onloads += 1
        if self._copies is None:
            block.on_device = [t for slot in block.slots for t in slot.onload(self.device, non_blocking=False)]
            return
        with torch.cuda.stream(self._copies):
            block.on_device = [t for slot in block.slots for t in slot.onload(self.device, non_blocking=True)]
            block.ready = torch.cuda.Event()
            block.ready.record(self._copies)

    def _wait(self, block: _Block) -> None:
        if block.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(block.ready)
            block.ready = None

    def _release(self, block: _Block) -> None:
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            for tensor in block.on_device:
                tensor.record_stream(compute)  # not reused before the compute stream has passed this point
        for slot in block.slots:
            slot.release()
        block.on_device = []
