import tmpdiff
from tmpdiff import PRECISIONS, Status, available_precisions, precision_status


def test_registry_has_the_canonical_names():
    assert list(PRECISIONS) == [
        "fp32", "bf16", "fp16", "fp8", "int8", "fp8wo", "int8wo", "int4wo", "mxfp8", "nvfp4", "fp8a8", "fp8r",
        "skip",
        "extrap",
    ]


def test_every_entry_reports_a_status_and_a_reason_on_cpu():
    rows = {a.name: a for a in available_precisions("cpu")}
    assert set(rows) == set(PRECISIONS)
    assert all(a.reason for a in rows.values())
    for name in ("fp32", "bf16", "skip"):
        assert rows[name].status is Status.REAL
    # Hopper/Blackwell formats cannot run for real on a CPU: simulated or unavailable, with a reason.
    for name in ("fp8", "mxfp8", "nvfp4"):
        assert rows[name].status is not Status.REAL
        assert "GPU" in rows[name].reason
    assert rows["fp8"].status is Status.SIMULATED  # torchao fake quantization
    assert rows["nvfp4"].status is Status.UNAVAILABLE


def test_unknown_name_is_a_value_error_naming_it():
    import pytest

    with pytest.raises(ValueError, match="unknown precision 'fp9'"):
        precision_status("fp9")


def test_package_exports():
    assert callable(tmpdiff.apply_schedule) and callable(tmpdiff.available_precisions)
