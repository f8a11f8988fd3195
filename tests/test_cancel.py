"""Cancellation: a stopped search ends at its next denoising step, frees the pipeline and is logged as such."""

import dataclasses
import threading
import time

import pytest

from tmpdiff.cache import Cache
from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.steps.cancel import Cancelled, cancellable, raise_if_cancelled
from tmpdiff.studies.request import SearchRequest
from tmpdiff.studies.study import Study

REQUEST = SearchRequest(model="shapes-dit", prompts=("red circle",), seeds=(0,), steps=8, ladder=("fp32", "skip"),
                        target_ssim=0.9, additivity_samples=0, validation_seeds=(1000,))


def test_the_token_belongs_to_the_thread_that_set_it():
    seen = []
    with cancellable(lambda: True):
        with pytest.raises(Cancelled):
            raise_if_cancelled()
        other = threading.Thread(target=lambda: seen.append(raise_if_cancelled()))  # another user's work
        other.start()
        other.join()
    assert seen == [None]
    raise_if_cancelled()  # outside the block nothing is cancelled


def test_a_cancelled_search_stops_at_a_step_frees_the_pipeline_and_is_logged(tmp_path):
    store = Cache(tmp_path / "c.sqlite")
    evaluator = Evaluator(Engine("cpu"), store)
    evaluations, steps_after_stop, stop = [], [], threading.Event()

    def progress(done, planned, what):
        evaluations.append(what)
        if done == 3:
            stop.set()

    original = evaluator.engine.call_now

    def counting(*args, **kwargs):  # denoiser calls made once the stop was asked for
        before = evaluator.engine.calls["denoiser"]
        try:
            return original(*args, **kwargs)
        finally:
            if stop.is_set():
                steps_after_stop.append(evaluator.engine.calls["denoiser"] - before)

    evaluator.engine.call_now = counting
    with pytest.raises(Cancelled):
        Study(evaluator, store).search(REQUEST, progress=progress, should_stop=stop.is_set)
    assert len(evaluations) == 3
    assert sum(steps_after_stop) <= 1  # at most the step that was running when the stop came
    run = store.search_runs()[0]
    assert run.result["cancelled"] is True and run.finished and run.evaluations >= 3
    # The pipeline is free at once: the next image runs.
    assert evaluator.evaluate(RunSettings(model="shapes-dit", steps=4), "fp32*4").record.ssim == pytest.approx(1)


def test_an_abandoned_live_search_stops_by_itself():
    from tmpdiff.ui.live import LiveSearch

    evaluator = Evaluator(Engine("cpu"))
    live = LiveSearch(Study(evaluator), REQUEST, interval=0.05, abandon_after=0.5)
    updates = live.updates()
    next(updates)  # the page takes one update, then goes away without closing the iterator
    deadline = time.monotonic() + 30
    while live._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live._thread.is_alive()
    with pytest.raises(Cancelled):
        live.result()


def test_the_engine_takes_pipeline_calls_in_turn():
    from tmpdiff.engine.turns import TurnLock

    lock, order, started = TurnLock(), [], threading.Event()

    def hog():
        for _ in range(50):  # releases and asks again at once: a plain Lock would let it cut in line
            with lock:
                started.set()
                time.sleep(0.002)
        order.append("hog done")

    def polite():
        started.wait()
        with lock:
            order.append("polite")

    threads = [threading.Thread(target=hog), threading.Thread(target=polite)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order == ["polite", "hog done"]
    with lock, lock:  # re-entrant for its holder
        pass


def test_single_images_go_before_a_search_call_that_waits_but_never_starve_it():
    from tmpdiff.engine.turns import TurnLock, in_background

    lock, order = TurnLock(yield_turns=2), []
    held = threading.Event()

    def holder():
        with lock:
            held.set()
            while len(lock._waiting) < 4:  # every caller below is waiting before the lock is let go
                time.sleep(0.001)

    def call(name, background):
        def run():
            if background:
                with in_background(), lock:
                    order.append(name)
            else:
                with lock:
                    order.append(name)
        return threading.Thread(target=run)

    first = threading.Thread(target=holder)
    first.start()
    held.wait()
    callers = [call("search", True), call("image 1", False), call("image 2", False), call("image 3", False)]
    for c in callers:  # asked in this order: the search first
        c.start()
        time.sleep(0.02)
    for t in [first, *callers]:
        t.join()
    assert order == ["image 1", "image 2", "search", "image 3"]  # two turns given up, then its own


def test_one_users_queued_images_do_not_hold_up_another_users_one_image():
    from tmpdiff.engine.turns import TurnLock, on_behalf_of

    lock, order, held = TurnLock(), [], threading.Event()

    def holder():
        with lock:
            held.set()
            while len(lock._waiting) < 4:
                time.sleep(0.001)

    def image(party, name):
        def run():
            with on_behalf_of(party), lock:
                order.append(name)
        return threading.Thread(target=run)

    first = threading.Thread(target=holder)
    first.start()
    held.wait()
    callers = [image("a", "a1"), image("a", "a2"), image("a", "a3"), image("b", "b1")]
    for c in callers:  # asked in this order: b's one image last
        c.start()
        time.sleep(0.02)
    for t in [first, *callers]:
        t.join()
    assert order == ["a1", "b1", "a2", "a3"]  # b was never served, a just was: b goes next; a's own stay in order


def test_a_turn_lock_remembers_a_bounded_number_of_sessions():
    from tmpdiff.engine.turns import FORGET_AFTER_GRANTS, TurnLock, on_behalf_of

    lock = TurnLock()
    for session in range(3 * FORGET_AFTER_GRANTS):  # every visitor of a long-lived app, once each
        with on_behalf_of(f"session {session}"), lock:
            pass
    assert len(lock._served) <= 2 * FORGET_AFTER_GRANTS
    assert f"session {3 * FORGET_AFTER_GRANTS - 1}" in lock._served  # the recent ones are kept


def test_a_cache_that_cannot_be_written_costs_the_cache_not_the_image(tmp_path):
    class Broken:
        def get(self, key):
            return None

        def put(self, record):
            raise OSError(30, "Read-only file system")

    evaluator = Evaluator(Engine("cpu"), Broken())
    with pytest.warns(UserWarning, match="could not be written.*Read-only file system"):
        evaluation = evaluator.evaluate(RunSettings(model="shapes-dit", steps=2), "fp32,skip")
    assert evaluation.record.steps_run == ["fp32", "skip"] and evaluation.image.size == (64, 64)
    assert "Read-only file system" in evaluator.store_error


def test_a_search_waiting_its_turn_says_so_and_stopped_there_never_runs(tmp_path):
    from tmpdiff.engine.turns import TurnLock
    from tmpdiff.ui.live import LiveSearch

    store = Cache(tmp_path / "c.sqlite")
    turns, held, release = TurnLock(), threading.Event(), threading.Event()

    def first_search():  # holds the turn, as a running search does
        with turns:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=first_search)
    holder.start()
    held.wait()
    waiting = LiveSearch(Study(Evaluator(Engine("cpu"), store), store), REQUEST, interval=0.05, turns=turns)
    updates = waiting.updates()
    assert next(updates).message == "waiting for the search ahead of this one to finish"
    waiting.stop()
    release.set()
    holder.join()
    list(updates)
    with pytest.raises(Cancelled):
        waiting.result()
    assert store.search_runs() == []  # it never started: nothing ran, nothing logged


def test_a_turn_lock_says_whether_a_newcomer_would_wait():
    from tmpdiff.engine.turns import TurnLock

    lock = TurnLock()
    assert not lock.taken
    with lock:
        assert lock.taken
    assert not lock.taken


def test_the_app_says_a_result_was_not_kept_in_that_request_only_and_without_paths(tmp_path, monkeypatch):
    import gradio as gr

    from tmpdiff import get_model
    from tmpdiff.studies.study import Study
    from tmpdiff.ui import panels
    from tmpdiff.ui.state import AppState

    store = Cache(tmp_path / "c.sqlite")
    put, failing = store.put, [True]

    def put_unless_failing(record):
        if failing[0]:
            raise OSError(28, f"No space left on device: {tmp_path}")
        return put(record)

    monkeypatch.setattr(store, "put", put_unless_failing)
    said: list[str] = []
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: said.append(message))
    app = AppState(Study.open(Engine("cpu"), store), get_model("shapes-dit"))
    args = ("shapes-dit", "red circle", 5, 4, 64, 3.0, "fp32*2,skip*2", lambda *a, **k: None)
    with pytest.warns(UserWarning, match="could not be written"):  # the server's log: with the reason
        panels.run_image(app, *args)
    assert len(said) == 1 and "could not be kept" in said[0] and str(tmp_path) not in said[0]
    failing[0] = False
    panels.run_image(app, *args[:-2], "fp32*3,skip", args[-1])  # the next visitor's image is kept: nothing said
    panels.run_image(app, *args)  # an image computed again and kept this time
    assert len(said) == 1 and len(store.evaluations()) == 3


def test_a_cancel_mid_image_writes_nothing_after_it_and_a_failed_search_is_closed_with_its_reason(tmp_path):
    store = Cache(tmp_path / "c.sqlite")
    evaluator = Evaluator(Engine("cpu"), store)
    stop, writes_after_stop = threading.Event(), []
    put, link = store.put, store.link_search
    store.put = lambda record: (writes_after_stop.append("row") if stop.is_set() else None, put(record))[1]
    store.link_search = lambda *a: (writes_after_stop.append("link") if stop.is_set() else None, link(*a))[1]
    calls, rows_at = evaluator.engine.calls, {}

    def stop_two_steps_into_an_image() -> bool:  # asked at every step boundary (and between images)
        if not stop.is_set() and len(store.evaluations()) >= 9:  # well into the search, past its batched start
            rows_at.setdefault("calls", calls["denoiser"])
            if calls["denoiser"] - rows_at["calls"] >= 2:
                rows_at["rows"] = len(store.evaluations())
                stop.set()
        return stop.is_set()

    with pytest.raises(Cancelled):
        Study(evaluator, store).search(REQUEST, should_stop=stop_two_steps_into_an_image)
    assert stop.is_set() and writes_after_stop == [] and calls["denoiser"] - rows_at["calls"] == 2
    assert len(store.evaluations()) == rows_at["rows"]
    assert store.search_runs()[0].result == {"cancelled": True, "evaluations_linked": rows_at["rows"]}

    def broken(*args, **kwargs):
        raise RuntimeError("the GPU fell off the bus\nsecond line")

    evaluator.engine.call_now = broken
    with pytest.raises(RuntimeError, match="fell off"):
        Study(evaluator, store).search(dataclasses.replace(REQUEST, seeds=(7,)))
    run = store.search_runs()[0]
    assert run.finished and run.result == {"failed": "RuntimeError: the GPU fell off the bus"}


@pytest.mark.parametrize("phase", ["costs", "baselines", "search", "validation"])
def test_a_search_closed_by_the_page_in_any_phase_stops_there_and_writes_nothing_after(tmp_path, monkeypatch, phase):
    """The app's search generator is closed (the page went away, or the request was cancelled) while ``phase``
    runs: the search stops within a denoising step of it, and neither the engine nor the cache does anything after
    the close returns. Costs and baselines come before any point is plotted, and are covered too."""
    from contextlib import contextmanager

    from tmpdiff.pipelines.registry import get_model
    from tmpdiff.studies import procedure
    from tmpdiff.ui import search_panel
    from tmpdiff.ui.state import AppState

    running, reached, rows_then = [], threading.Event(), []
    original_phase = procedure.PhaseMeter.phase

    @contextmanager
    def watched(self, name):
        running.append(name)
        with original_phase(self, name):
            yield
        running.pop()

    original_call = Engine.call_now

    def calling(self, *args, **kwargs):
        if running and running[-1] == phase and not reached.is_set():
            rows_then.append(len(store.evaluations()))
            reached.set()
            time.sleep(2.0)  # a phase as short as one image still has the close land inside it
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(procedure.PhaseMeter, "phase", watched)
    monkeypatch.setattr(Engine, "call_now", calling)
    store = Cache(tmp_path / "c.sqlite")
    app = AppState(Study(Evaluator(Engine("cpu"), store, measures_costs=True), store), get_model("shapes-dit"))
    updates = search_panel.search_updates(app, "shapes-dit", "SSIM floor", 0.9, 8, "fp32,skip", 1, "0",
                                          lambda *a, **k: None)
    for _ in updates:
        if reached.is_set():
            break
    assert reached.is_set(), f"the search ended before its {phase} phase"
    updates.close()  # what Gradio does when the page goes away or the request is cancelled
    calls, rows = app.evaluator.engine.calls["denoiser"], len(store.evaluations())
    time.sleep(1.5)
    assert app.evaluator.engine.calls["denoiser"] == calls and len(store.evaluations()) == rows
    assert rows - rows_then[0] <= 1  # closed in that phase: at most the image that was running was kept
    [run] = store.search_runs()
    assert run.finished and run.result.get("cancelled") is True
