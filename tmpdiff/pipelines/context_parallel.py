"""One image over several GPUs: diffusers' context parallelism, with per-step precisions still switching.

Each process of a ``torchrun --nproc-per-node N`` launch loads the pipeline on its own GPU and calls it with the
same arguments; the denoiser's tokens are split over the processes and attention exchanges heads between them
(Ulysses: an all-to-all before and after each attention). Every precision variant tmpdiff builds is
made context-parallel on the same process groups (see ``variants.copies.copy_module``), so a schedule runs as it
would on one GPU, each step on all of them.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import torch

from tmpdiff.switching.switch import denoisers_of

__all__ = ["CallMirror", "decode_call_kwargs", "enable_context_parallel", "encode_call_kwargs",
           "init_process_group", "is_main_process", "leave_process_group", "split_degree"]


def init_process_group() -> tuple[int, int]:
    """Joins the process group a ``torchrun`` launch describes (NCCL on CUDA, Gloo on the CPU) and pins this
    process's GPU; returns (rank, world size)."""
    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise ValueError("context parallelism runs one process per GPU: start with "
                         "`torchrun --nproc-per-node N ...` (RANK is not set)")
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def leave_process_group() -> None:
    """Leaves the launch's process group, if joined (a process that exits with its groups alive can abort
    in their teardown)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def enable_context_parallel(pipe: Any, degree: int) -> None:
    """Splits every denoiser of ``pipe`` over ``degree`` processes (Ulysses: the process group's all, for now).

    Ulysses, not ring attention: diffusers' default attention backend takes it, and it keeps each process's
    attention one ordinary ``scaled_dot_product_attention`` call, so the ``fp8a8`` rung's fp8 attention still
    applies (ring attention needs a backend that returns log-sum-exps, which the fp8 kernel call does not)."""
    from diffusers import ContextParallelConfig

    for name, denoiser in denoisers_of(pipe):
        if getattr(denoiser, "_cp_plan", None) is None:
            raise ValueError(f"its {name} ({type(denoiser).__name__}) cannot be split over GPUs: diffusers declares "
                             "no context-parallel plan for it; run this model without --parallel")
        heads = getattr(denoiser.config, "num_attention_heads", None)
        if heads is not None and heads % degree:
            raise ValueError(f"{name} has {heads} attention heads, which {degree} processes cannot share "
                             f"(Ulysses splits heads): use a number of GPUs that divides {heads}")
        enable: Any = denoiser.enable_parallelism  # a diffusers ModelMixin's
        enable(config=ContextParallelConfig(ulysses_degree=degree))


def split_degree(pipe: Any) -> int:
    """Over how many processes the pipeline's denoisers are split (1: not split), read from their configs."""
    configs = [getattr(getattr(d, "_parallel_config", None), "context_parallel_config", None)
               for _, d in denoisers_of(pipe)]
    return max((c.ulysses_degree or 1) * (c.ring_degree or 1) if c is not None else 1 for c in configs)


class CallMirror:
    """An app split over the processes of a ``--parallel`` launch: the first process serves people and tells the
    others each pipeline call it makes, in its order, and they make the same call (the denoiser exchanges data
    between all of them every step, so every call must be made by all, in one order).

    Messages are JSON on a Gloo group of their own (on the CPU, beside NCCL's exchanges); nothing is pickled.
    A stop asked in the first process is agreed at the next step boundary (see ``cancel.agreeing``), so every
    process leaves the call at the same step."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.rank = dist.get_rank()
        self._group: Any = dist.new_group(backend="gloo")  # every process makes this call, in this order
        self._lock = threading.RLock()  # one message and the work it announces at a time (see Engine)

    @property
    def leads(self) -> bool:
        return self.rank == 0

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def announce(self, message: dict[str, Any]) -> None:
        """In the first process: the message every other process acts on next."""
        _broadcast_json(message, self._group)

    def next_message(self) -> dict[str, Any]:
        """In the other processes: the first process's next message (waits for it)."""
        return _broadcast_json(None, self._group)

    def any_stops(self, stop: bool) -> bool:
        """True on every process when any one of them asks to stop (a collective: all call it together)."""
        import torch.distributed as dist

        flag = torch.tensor([int(stop)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())


def _broadcast_json(message: dict[str, Any] | None, group: Any) -> dict[str, Any]:
    import torch.distributed as dist

    payload = json.dumps(message).encode() if message is not None else b""
    size = torch.tensor([len(payload)], dtype=torch.int64)
    dist.broadcast(size, src=0, group=group)
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else \
        torch.empty(int(size.item()), dtype=torch.uint8)
    dist.broadcast(data, src=0, group=group)
    return message if message is not None else json.loads(bytes(data.tolist()).decode())


def encode_call_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A pipeline call's arguments as JSON: text, numbers and lists of them as they are; a generator as its
    device and state, so another process draws the same noise."""
    return {key: _encoded(value, key) for key, value in kwargs.items()}


def decode_call_kwargs(encoded: dict[str, Any]) -> dict[str, Any]:
    return {key: _decoded(value) for key, value in encoded.items()}


def _encoded(value: Any, key: str) -> Any:
    if isinstance(value, torch.Generator):
        return {"generator": str(value.device), "state": value.get_state().numpy().tobytes().hex()}
    if isinstance(value, list | tuple):
        return [_encoded(item, key) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"a split pipeline call cannot pass {key}={type(value).__name__} to its other processes")


def _decoded(value: Any) -> Any:
    if isinstance(value, dict):  # a generator: on this process's own GPU where the first's was on its
        generator = torch.Generator("cuda" if value["generator"].startswith("cuda") else value["generator"])
        generator.set_state(torch.frombuffer(bytearray.fromhex(value["state"]), dtype=torch.uint8))
        return generator
    if isinstance(value, list):
        return [_decoded(item) for item in value]
    return value
