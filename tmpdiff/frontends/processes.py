"""The processes of a ``--parallel`` launch, seen from the command that starts them.

``tmpdiff generate --parallel N`` and ``tmpdiff-app --parallel N`` start themselves again in N processes through
torchrun. A user's mistake found inside them (a model that cannot be split, say) is one line and exit code 2 from
the command the user typed, as anywhere else, and not a failed-worker report from torchrun: the first process
records the code for the starting command, and every process exits 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["check_processes", "refusal_exit", "run_over_gpus"]

EXIT_CODE_FILE_ENV = "TMPDIFF_EXIT_CODE_FILE"


def check_processes(processes: int) -> None:
    """A ``--parallel`` value: a number of GPUs, 1 or more (``ValueError`` otherwise)."""
    if processes < 1:
        raise ValueError(f"--parallel takes a number of GPUs, 1 or more; got {processes}")


def run_over_gpus(processes: int, device: str, module: str, argv: list[str] | None) -> int:
    """Runs ``python -m <module> <argv>`` (default: this command's arguments) in ``processes`` processes, one a
    CUDA GPU, through torchrun; the exit code its first process chose (see :func:`refusal_exit`), else
    torchrun's. Refused (``ValueError``) when this machine has fewer GPUs."""
    import torch

    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    if processes > gpus:
        raise ValueError(f"--parallel {processes} splits one image over {processes} CUDA GPUs; this machine "
                         f"has {gpus}{'' if gpus else ' (on the CPU, leave --parallel out)'}")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
              "-m", module, *(sys.argv[1:] if argv is None else argv)]
    with tempfile.TemporaryDirectory(prefix="tmpdiff-launch-") as folder:
        chosen = Path(folder) / "exit_code"
        done = subprocess.run(launch, check=False, env={**os.environ, EXIT_CODE_FILE_ENV: str(chosen)})
        return int(chosen.read_text()) if chosen.exists() else done.returncode


def refusal_exit(code: int) -> int:
    """The exit code for a process that refused a user's mistake (already said in one line): ``code`` itself,
    or inside a launch 0, the first process having recorded ``code`` for the command that started them."""
    where = os.environ.get(EXIT_CODE_FILE_ENV)
    if where is None or "RANK" not in os.environ:
        return code
    if os.environ["RANK"] == "0":
        Path(where).write_text(str(code))
    return 0
