import subprocess
import sys

import pytest

from tmpdiff import Schedule


def test_parse_expands_counts_and_round_trips():
    s = Schedule.parse("bf16*2, int8wo ,fp8*3,bf16")
    assert s.steps == ("bf16", "bf16", "int8wo", "fp8", "fp8", "fp8", "bf16")
    assert str(s) == "bf16*2,int8wo,fp8*3,bf16"
    assert Schedule.parse(str(s)) == s


def test_parse_checks_step_count():
    assert len(Schedule.parse("fp32*4", steps=4)) == 4
    with pytest.raises(ValueError, match=r"has 4 steps but 5 were asked"):
        Schedule.parse("fp32*4", steps=5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bf16,int9", r"unknown precision 'int9'"),
        ("bf16**2", r"malformed schedule token 'bf16\*\*2'"),
        ("bf16,,fp8", r"malformed schedule token ''"),
        ("bf16*0", r"repeats 0 times"),
        ("skip,bf16", r"'skip' cannot be the first step"),
        ("", r"empty schedule"),
    ],
)
def test_bad_text_names_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        Schedule.parse(text)


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps must be a positive number, got 0"):
        Schedule.parse("bf16", steps=0)
    with pytest.raises(ValueError, match="got -3"):
        Schedule.uniform("bf16", -3)


def test_hash_is_stable_across_processes_and_distinguishes_schedules():
    text = "bf16*2,fp8*2"
    here = Schedule.parse(text).hash
    other = subprocess.run(
        [sys.executable, "-c", f"from tmpdiff import Schedule; print(Schedule.parse({text!r}).hash)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert here == other
    assert len(here) == 16 and int(here, 16) >= 0
    assert Schedule.parse("bf16*2,fp8,bf16").hash != here
    assert Schedule.from_dict(Schedule.parse(text).to_dict()) == Schedule.parse(text)


def test_replace_and_precisions():
    s = Schedule.uniform("fp32", 4).replace([1, 2], "int8")
    assert str(s) == "fp32,int8*2,fp32"
    assert s.precisions == ("fp32", "int8")


def test_a_count_of_any_length_gets_the_projects_own_message():
    import pytest

    from tmpdiff import Schedule

    for digits in (5, 5000, 100_000):
        with pytest.raises(ValueError, match="takes it past 1000 steps") as refused:
            Schedule.parse("fp32*" + "9" * digits)
        assert "set_int_max_str_digits" not in str(refused.value) and len(str(refused.value)) < 300
    assert str(Schedule.parse("fp32*" + "0" * 5000 + "2")) == "fp32*2"  # leading zeros are still a count
