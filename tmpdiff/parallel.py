"""One image over several GPUs: diffusers' context parallelism, with per-step precisions still switching.

Each process of a ``torchrun --nproc-per-node N`` launch loads the pipeline on its own GPU and calls it with the
same arguments; the denoiser's tokens are split over the processes and attention exchanges heads between them
(Ulysses: an all-to-all before and after each attention). Every precision variant tmpdiff builds is
made context-parallel on the same process groups (see ``variants._copy``), so a schedule runs as it would on one
GPU, each step on all of them.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .switch import denoisers_of

__all__ = ["enable_context_parallel", "init_process_group", "is_main_process", "split_degree"]


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
        heads = getattr(denoiser.config, "num_attention_heads", None)
        if heads is not None and heads % degree:
            raise ValueError(f"{name} has {heads} attention heads, which {degree} processes cannot share "
                             f"(Ulysses splits heads): use a number of GPUs that divides {heads}")
        denoiser.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))


def split_degree(pipe: Any) -> int:
    """Over how many processes the pipeline's denoisers are split (1: not split), read from their configs."""
    configs = [getattr(getattr(d, "_parallel_config", None), "context_parallel_config", None)
               for _, d in denoisers_of(pipe)]
    return max((c.ulysses_degree or 1) * (c.ring_degree or 1) if c is not None else 1 for c in configs)
