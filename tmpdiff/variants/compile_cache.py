"""Compiled variants that outlive the process, kept in the tmpdiff cache folder.

Built on PyTorch's own mechanisms only:

* Inductor's FX-graph cache, AOTAutograd's cache and Triton's kernel cache are pointed into
  ``<cache dir>/compiled/inductor`` (unless the user already chose a folder for them);
* after a variant's first compilation, ``torch.compiler.save_cache_artifacts()`` is written to one
  file per :class:`CompileKey`, and a later process hot-loads it with
  ``torch.compiler.load_cache_artifacts`` before compiling, so it pays only for loading;
* ahead-of-time variants are AOTInductor ``.pt2`` packages (see ``aot.py``), one per repeated block
  class, stored under the same key.

Every entry has a JSON manifest with the SHA-256 of its payload: a stale, truncated or corrupt
entry is reported with a :class:`CompileCacheWarning`, removed, and rebuilt; it never stops a run.
File names are key digests, never user text.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tmpdiff.atomic import write_atomically
from tmpdiff.errors import TmpdiffWarning

__all__ = [
    "CACHE_DIR_ENV", "CompileCache", "CompileCacheWarning", "CompileKey", "cache_root", "check_cache_dir",
    "input_signature", "module_identity",
]

_SET_BY_TMPDIFF = "TMPDIFF_INDUCTOR_CACHE_DIR"  # the Inductor cache folder tmpdiff chose
CACHE_DIR_ENV = "TMPDIFF_CACHE_DIR"
FORMAT = 1
_LIBRARIES = ("torch", "torchao", "diffusers", "triton")


class CompileCacheWarning(TmpdiffWarning):
    """A compile-cache entry could not be used and is being rebuilt."""


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The tmpdiff cache folder: ``override``, else ``$TMPDIFF_CACHE_DIR``, else the user cache folder."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tmpdiff"))


def check_cache_dir(path: str | os.PathLike[str]) -> Path:
    """The folder, created if needed; a ``ValueError`` naming it when it cannot hold a cache."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cache folder {str(folder)!r} is a file: pass a folder (or leave it out for the default)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"cache folder {str(folder)!r} is not writable ({exc.strerror}): pass another one") from None
    return folder


@dataclass(frozen=True)
class CompileKey:
    """Everything that decides compiled code: not the weights, which compiled code takes as inputs."""

    mode: str  # "compiled" or "aot"
    precision: str
    module: dict[str, Any]
    inputs: list[Any]
    device: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, mode: str, precision: str, module: nn.Module, args: tuple, kwargs: dict,
             device: torch.device) -> CompileKey:
        return cls(mode=mode, precision=precision, module=module_identity(module),
                   inputs=input_signature(args, kwargs), device=device_identity(device), versions=library_versions())

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @property
    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


def module_identity(module: nn.Module) -> dict[str, Any]:
    """The module's class and architecture config (diffusers models carry one), not its weights."""
    config = getattr(module, "config", None)
    # Private entries (``_use_default_values``, a list in set order) change between processes.
    public = {k: v for k, v in dict(config).items() if not k.startswith("_")} if config is not None else None
    described = json.loads(json.dumps(public, sort_keys=True, default=str))
    return {"class": f"{type(module).__module__}.{type(module).__qualname__}", "config": described,
            "dtype": str(next(module.parameters()).dtype)}


def input_signature(args: tuple, kwargs: dict) -> list[Any]:
    """Shapes, dtypes and strides of every tensor in a call, and the values of plain arguments."""
    leaves, spec = torch.utils._pytree.tree_flatten((args, kwargs))
    described: list[Any] = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            described.append([list(leaf.shape), str(leaf.dtype), list(leaf.stride()), leaf.device.type])
        elif leaf is None or isinstance(leaf, bool | int | float | str):
            described.append(leaf)
        else:
            described.append(type(leaf).__qualname__)
    return described


def device_identity(device: torch.device) -> dict[str, str]:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {"type": "cuda", "capability": f"{major}.{minor}", "name": torch.cuda.get_device_name(device)}
    return {"type": device.type, "machine": platform.machine()}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    versions["torch"] = torch.__version__  # the running build, with its CUDA tag
    return versions


class CompileCache:
    """Compiled artifacts by :class:`CompileKey` under ``<root>/compiled``.

    Example:
        >>> cache = CompileCache(tmp_path)  # doctest: +SKIP
        >>> hit = cache.load_artifacts(key)  # before the first compiled call  # doctest: +SKIP
        >>> cache.save_artifacts(key, seconds=31.2)  # after it, on a miss  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = cache_root(root) / "compiled"
        self._activated = False

    def activate(self) -> None:
        """Points Inductor's and Triton's own on-disk caches into this folder (before any compilation)."""
        if self._activated:
            return
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        self.root.mkdir(parents=True, exist_ok=True)
        # Importing torchao already wrote Inductor's default into the environment: only a folder the
        # user chose (any other value) is kept.
        # A value tmpdiff set, here or in a parent process (which child processes inherit), is not the
        # user's either.
        default = os.path.abspath(default_cache_dir())
        ours = os.environ.get(_SET_BY_TMPDIFF)
        if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default, ours):
            inductor = str(self.root / "inductor")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.environ[_SET_BY_TMPDIFF] = inductor
            triton = os.environ.get("TRITON_CACHE_DIR", "")
            if triton.startswith(default) or (ours and triton.startswith(ours)):
                del os.environ["TRITON_CACHE_DIR"]  # Inductor then puts Triton's beside its own
        self._activated = True

    # --- torch.compile artifacts ----------------------------------------------------------
    def load_artifacts(self, key: CompileKey) -> bool:
        """Hot-loads the saved artifacts of ``key`` into this process; False when there are none."""
        payload = self._read(key, f"{key.digest}.bin")
        if payload is None:
            return False
        try:
            loaded = torch.compiler.load_cache_artifacts(payload)
        except Exception as exc:  # whatever PyTorch rejects is rebuilt, never fatal
            loaded, why = None, type(exc).__name__
        else:
            why = "unreadable artifacts"
        if loaded is None:  # PyTorch logs and returns None for artifacts it cannot read
            self._discard(key, f"PyTorch could not load it ({why})")
            return False
        return True

    def save_artifacts(self, key: CompileKey, seconds: float) -> None:
        """Saves what this process compiled so far under ``key``."""
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return
        self._write(key, {f"{key.digest}.bin": saved[0]}, seconds)

    # --- AOTInductor packages ---------------------------------------------------------------
    def package_path(self, key: CompileKey, block: str) -> Path:
        return self.root / f"{key.digest}.{_safe(block)}.pt2"

    def has_packages(self, key: CompileKey, blocks: list[str]) -> bool:
        """Whether every block's package of ``key`` is stored and intact."""
        return all(self._read(key, self.package_path(key, b).name) is not None for b in blocks)

    def save_packages(self, key: CompileKey, built: dict[str, Path], seconds: float) -> None:
        """Moves freshly built packages into the cache under ``key``."""
        self._write(key, {self.package_path(key, block).name: path.read_bytes() for block, path in built.items()},
                    seconds)

    # --- bookkeeping ----------------------------------------------------------------------------
    def previous_seconds(self, mode: str, precision: str, module: nn.Module) -> float | None:
        """How long a stored compilation of this precision of this kind of module took here, if any."""
        wanted = (mode, precision, module_identity(module))
        times = []
        for entry in self.entries():
            try:
                key = entry["key"]
                if (key["mode"], key["precision"], key["module"]) == wanted:
                    times.append(float(entry["seconds"]))
            except (KeyError, TypeError, ValueError):
                continue
        return max(times, default=None)

    def entries(self) -> list[dict[str, Any]]:
        """Every readable manifest in the cache folder."""
        out = []
        for manifest in sorted(self.root.glob("*.json")):
            try:
                out.append(json.loads(manifest.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def _manifest(self, key: CompileKey) -> Path:
        return self.root / f"{key.digest}.json"

    def _read(self, key: CompileKey, name: str) -> bytes | None:
        manifest_path = self._manifest(key)
        if not manifest_path.exists():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            expected = manifest["files"][name]
            if manifest["key"] != json.loads(json.dumps(key.to_dict(), default=str)):
                self._discard(key, "its key does not match (a version or setting changed)")
                return None
            payload = (self.root / name).read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._discard(key, f"it is unreadable ({type(exc).__name__})")
            return None
        if hashlib.sha256(payload).hexdigest() != expected:
            self._discard(key, "its checksum does not match (truncated or corrupt)")
            return None
        return payload

    def _write(self, key: CompileKey, files: dict[str, bytes], seconds: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name, payload in files.items():
            write_atomically(self.root / name, payload)
        manifest = {"key": key.to_dict(), "seconds": round(seconds, 3), "created": time.time(),
                    "files": {name: hashlib.sha256(payload).hexdigest() for name, payload in files.items()}}
        # The manifest goes last: an entry without one does not exist, so a killed write leaves no half entry.
        write_atomically(self._manifest(key), json.dumps(manifest, indent=1, default=str).encode())

    def _discard(self, key: CompileKey, why: str) -> None:
        warnings.warn(f"compile cache entry {key.digest} for {key.precision} ({key.mode}) is unusable: {why}; "
                      "it is removed and rebuilt", CompileCacheWarning, stacklevel=3)
        for path in self.root.glob(f"{key.digest}.*"):
            path.unlink(missing_ok=True)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
