"""The engine stays free of UI and database code, and importing it touches no GPU."""

import subprocess
import sys

CHECK = """
import sys, torch
import tmpdiff, tmpdiff.runner, tmpdiff.metrics, tmpdiff.switch
bad = [m for m in ("gradio", "sqlalchemy") if m in sys.modules]
assert not bad, bad
assert not torch.cuda.is_initialized()
print("clean")
"""


def test_engine_imports_no_gradio_no_sqlalchemy_and_no_cuda():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.stdout.strip() == "clean", result.stderr
