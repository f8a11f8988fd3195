"""Who may queue work on the app: a few jobs per session, a bounded number in all, and a wait estimate."""

import pytest

from tmpdiff.ui.admission import Admission, Busy


def test_a_session_holds_a_few_jobs_and_the_app_a_bounded_number():
    admission = Admission({"image": (2, 3)})
    with admission.job("image", "a"), admission.job("image", "a"):
        with pytest.raises(Busy, match="you already have 2 images waiting or running"):
            with admission.job("image", "a"):
                pass
        with admission.job("image", "b"):  # another session still gets in, up to the app's bound
            with pytest.raises(Busy, match=r"busy: 3 images are ahead of yours; try again in ~5 s"):
                with admission.job("image", "c"):
                    pass
    with admission.job("image", "a"), admission.job("image", "a"):  # every place was given back
        pass


def test_the_wait_told_comes_from_how_often_jobs_finished(monkeypatch):
    import tmpdiff.ui.admission as module

    clock = iter([100.0, 102.0, 104.0, 106.0])
    monkeypatch.setattr(module.time, "monotonic", lambda: next(clock))
    admission = Admission({"image": (1, 1)})
    for session in ("a", "b", "c", "d"):  # finishing at 100, 102, 104, 106
        with admission.job("image", session):
            pass
    assert admission.wait_seconds("image") == pytest.approx(2.0)


def test_a_job_that_fails_gives_its_place_back():
    admission = Admission({"search": (1, 2)})
    with pytest.raises(RuntimeError), admission.job("search", "a"):
        raise RuntimeError("boom")
    with admission.job("search", "a"):
        pass
