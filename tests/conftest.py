import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# No test reaches the internet for LPIPS's AlexNet weights (the download path is tested on a local server).
os.environ.setdefault("TMPDIFF_LPIPS_URL", "off")
# Keep the suite's cache databases out of the user's cache folder.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="tmpdiff-tests-")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
logging.getLogger("torchao").setLevel(logging.ERROR)

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_system_package(found: object, package: str, what: str) -> None:
    """Skips (locally) or fails (in CI, which must install it: make test does) a test whose Debian package
    is missing."""
    if found:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the {what}: install Debian's {package} (make test does)")
    pytest.skip(f"no {package} here: `apt-get install {package}`")


TINY = ["tiny-flux", "tiny-sd3", "tiny-sdxl", "tiny-sd15", "tiny-pixart", "tiny-sana"]


def pytest_collection_modifyitems(config, items):
    import torch

    # Compiling in this process leaves compiler and OpenMP threads behind that skew the CPU timings
    # other tests measure: those tests run last.
    items.sort(key=lambda item: "compiles" in item.keywords)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pipes():
    """Tiny pipelines, built once per session (they are never mutated by the engine)."""
    from tmpdiff import load_pipeline

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_pipeline(name)
        return cache[name]

    return get


def make_comparison(schedule: str = "fp32*2,skip*2", store=None, **settings):
    """A real comparison of the default model on the CPU (a few hundredths of a second)."""
    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.studies.study import Study

    return Study.open(Engine("cpu"), store).compare(RunSettings(model="shapes-dit", **{"steps": 4, **settings}),
                                                    schedule)


def decided(value):
    """A report's part with what each process measures for itself (peak memory) left out: what a search decided
    and scored, for comparing two runs of it."""
    if isinstance(value, dict):
        return {k: decided(v) for k, v in value.items() if k != "peak_gib"}
    if isinstance(value, list):
        return [decided(v) for v in value]
    return value
