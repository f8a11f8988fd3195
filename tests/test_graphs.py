"""CUDA graphs of whole denoiser calls: what decides a capture's reuse, and that off CUDA nothing changes
(the captures themselves are tested on the GPU, tests/test_gpu.py)."""

import numpy as np
import pytest
import torch

from tmpdiff import apply_schedule, get_model
from tmpdiff.switching.switch import denoiser_of
from tmpdiff.variants.bank import bank_for
from tmpdiff.variants.graphs import graphs_enabled, signature


def test_a_signature_tells_shapes_and_plain_values_apart_but_not_tensor_values():
    x = torch.zeros(2, 3)
    same = signature((x,), {"t": torch.ones(1), "return_dict": False})
    assert same == signature((torch.randn(2, 3),), {"t": torch.full((1,), 7.0), "return_dict": False})
    assert same != signature((torch.zeros(2, 4),), {"t": torch.ones(1), "return_dict": False})
    assert same != signature((x.t().contiguous().t(),), {"t": torch.ones(1), "return_dict": False})  # strides
    assert same != signature((x,), {"t": torch.ones(1), "return_dict": True})
    assert same != signature((x.half(),), {"t": torch.ones(1), "return_dict": False})
    assert signature((x,), {"scale": 1.0}) != signature((x,), {"scale": 2.0})


def test_an_argument_that_is_not_a_tensor_or_plain_value_gets_no_graph():
    assert signature((torch.zeros(1),), {"processor": object()}) is None


@pytest.mark.parametrize(("setting", "expected"), [(None, True), ("1", True), ("0", False), ("off", False)])
def test_graphs_follow_the_environment_unless_the_caller_chooses(monkeypatch, setting, expected):
    _graphs_setting(monkeypatch, setting)
    assert graphs_enabled(None) is expected
    assert graphs_enabled(True) is True and graphs_enabled(False) is False


def test_off_cuda_a_graphs_request_runs_the_plain_calls(pipes):
    tiny_sd = pipes("tiny-sd15")
    spec = get_model("tiny-sd15")
    kwargs = spec.call_kwargs("a red circle", steps=4, seed=0)
    with apply_schedule(tiny_sd, "fp32*4", compile=False, cuda_graphs=False):
        plain = tiny_sd(**kwargs, output_type="np").images[0]
    kwargs = spec.call_kwargs("a red circle", steps=4, seed=0)
    with apply_schedule(tiny_sd, "fp32*4", compile=False, cuda_graphs=True):
        asked = tiny_sd(**kwargs, output_type="np").images[0]
    assert np.array_equal(plain, asked)
    assert not bank_for(denoiser_of(tiny_sd)).graphs.captured


@pytest.mark.parametrize(("setting", "split"), [(None, False), ("1", False), ("all", True), ("0", False)])
def test_a_split_denoiser_is_graphed_only_when_asked(monkeypatch, setting, split):
    from tmpdiff.variants.graphs import split_graphs_enabled

    _graphs_setting(monkeypatch, setting)
    assert split_graphs_enabled() is split
    assert graphs_enabled(None) is (setting != "0")


def test_only_rungs_checked_on_a_gpu_and_running_real_kernels_are_captured():
    from tmpdiff import Status, precision_status
    from tmpdiff.variants.bank import _capturable

    cpu = torch.device("cpu")
    assert _capturable("bf16", cpu) and _capturable("fp32", cpu)
    assert not _capturable("int8", cpu)  # its capture failed on an H200
    assert not _capturable("skip", cpu)
    assert precision_status("fp8a8", cpu).status is not Status.REAL
    assert not _capturable("fp8a8", cpu)  # simulated here: its fake quantization was never captured


def _graphs_setting(monkeypatch: pytest.MonkeyPatch, setting: str | None) -> None:
    """``$TMPDIFF_CUDA_GRAPHS`` set to ``setting`` for the test (unset for None)."""
    if setting is None:
        monkeypatch.delenv("TMPDIFF_CUDA_GRAPHS", raising=False)
    else:
        monkeypatch.setenv("TMPDIFF_CUDA_GRAPHS", setting)


def test_a_call_with_autograd_on_runs_as_it_is_and_captures_nothing():
    from tmpdiff.variants.graphs import CallGraphs

    graphs = CallGraphs()
    x = torch.ones(3, requires_grad=True)
    with torch.enable_grad():
        output, capturing = graphs.call(("bf16", "compiled"), lambda t: t * 2, (x,), {})
    assert output.grad_fn is not None and capturing == 0.0  # its history kept: nothing was replayed
    assert not graphs.captured and not graphs.refused
