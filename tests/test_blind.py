"""The blind test's engine: pairs from the cache, one answer per pair shown, a per-session rate, answers by session;
and the images it serves, which say nothing of which is the reference."""

import io

import numpy as np
import pytest
from PIL import Image

from tmpdiff.cache import Cache
from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.errors import FieldError
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.studies.blind import BlindBook, BlindPair, blind_settings, next_pair, record_answer, tallies


def pair(token="t1", reference_first=True):
    return BlindPair(1, "fp32*2,skip*2", reference_first, b"a", b"b", token)


def test_an_answer_is_taken_once_for_the_pair_shown_to_that_session():
    book = BlindBook()
    book.show(pair("t1"), "s1")
    with pytest.raises(FieldError, match="answered already"):
        book.take("t1", "s2")  # another session: not its pair
    assert book.take("t1", "s1").token == "t1"
    with pytest.raises(FieldError, match="answered already"):
        book.take("t1", "s1")  # the same pair again
    with pytest.raises(FieldError, match="answered already"):
        book.take(None, "s1")  # nothing shown


def test_a_session_answers_at_most_so_many_a_minute_and_more_after_the_minute():
    now = [0.0]
    book = BlindBook(per_minute=3, clock=lambda: now[0])
    for i in range(5):
        book.show(pair(f"t{i}"), "s")
    for i in range(3):
        book.take(f"t{i}", "s")
    with pytest.raises(FieldError, match="at most 3 answers a minute"):
        book.take("t3", "s")
    book.show(pair("other"), "s2")
    assert book.take("other", "s2").token == "other"  # another session has its own bound
    now[0] = 61.0
    assert book.take("t3", "s").token == "t3"  # the refused answer was not used up


def test_unanswered_pairs_are_bounded_oldest_first():
    book = BlindBook(outstanding=2)
    for token in ("a", "b", "c"):
        book.show(pair(token), None)
    with pytest.raises(FieldError):
        book.take("a", None)
    assert book.take("c", None).token == "c"


def test_a_session_is_stored_as_a_salted_tag_never_its_id():
    book, other = BlindBook(), BlindBook()
    tag = book.session_tag("abc123")
    assert tag and "abc123" not in tag and tag == book.session_tag("abc123") and tag != other.session_tag("abc123")
    assert book.session_tag(None) is None


def test_pairs_come_from_the_cache_and_answers_are_tallied_with_their_sessions(tmp_path):
    store = Cache(tmp_path / "c.sqlite")
    evaluator = Evaluator(Engine("cpu"), store)
    settings = RunSettings(model="shapes-dit", steps=4, seed=3, prompt="blue circle")
    assert next_pair(evaluator, store, settings) is None and blind_settings(evaluator, store, "shapes-dit") == []
    for schedule in ("fp32*4", "fp32*2,skip*2", "fp32*3,skip"):
        evaluator.evaluate(settings, schedule)
    [offered] = blind_settings(evaluator, store, "shapes-dit")
    assert offered.schedules == 2 and "blue circle · seed 3 · 4 steps" in offered.label
    assert evaluator.key(offered.settings, offered.settings.reference_schedule()).settings_hash == \
        offered.settings_hash  # the setting rebuilt from the cache keys the same rows
    book = BlindBook()
    shown = next_pair(evaluator, store, settings)
    assert shown is not None and shown.token and shown.first_png != shown.second_png
    reference = store.get(evaluator.key(settings, settings.reference_schedule())).png
    assert (shown.first_png if shown.reference_first else shown.second_png) == reference
    book.show(shown, "s1")
    taken = book.take(shown.token, "s1")
    assert record_answer(store, taken, "first", book.session_tag("s1")) == \
        ("right" if shown.reference_first else "wrong")
    second = next_pair(evaluator, store, settings)  # the schedule answered least comes next
    assert second is not None and second.evaluation_id != shown.evaluation_id and second.token != shown.token
    record_answer(store, second, "unsure", book.session_tag("s2"))
    record_answer(store, second, "unsure", book.session_tag("s2"))
    counted = {t.schedule: t for t in tallies(evaluator, store, settings)}
    assert counted[second.schedule].unsure == 2 and counted[second.schedule].sessions == 1
    assert counted[shown.schedule].answers == 1 and counted[shown.schedule].sessions == 1
    with pytest.raises(FieldError, match="one of first, second, unsure"):
        record_answer(store, second, "left")


def test_a_blind_image_is_served_under_a_random_name_with_its_pixels_and_a_size_of_its_own(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    from tmpdiff.ui.served import served_blind, served_file

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    png = buffer.getvalue()
    paths = [served_blind(png) for _ in range(6)]
    assert len({p.rsplit("/", 2)[-2] for p in paths}) == 6 and all(p.endswith("/image.png") for p in paths)
    assert hashlib.sha256(png).hexdigest() not in "".join(paths)
    assert served_file(png, "image.png") not in paths  # never the address the other tabs use
    blobs = [open(p, "rb").read() for p in paths]
    assert len({len(b) for b in blobs}) >= 5  # sizes vary: a size says nothing across pairs
    original = np.asarray(Image.open(io.BytesIO(png)))
    assert all(np.array_equal(np.asarray(Image.open(io.BytesIO(b))), original) for b in blobs)  # lossless


def test_the_tabs_answer_is_kept_once_and_a_cache_that_refuses_it_still_reveals_the_pair(tmp_path):
    import sqlite3

    import gradio as gr

    from tmpdiff.pipelines.registry import get_model
    from tmpdiff.studies.study import Study
    from tmpdiff.ui import blind as tab
    from tmpdiff.ui.state import AppState

    store = Cache(tmp_path / "c.sqlite")
    app = AppState(Study(Evaluator(Engine("cpu"), store), store), get_model("shapes-dit"))
    settings = RunSettings(model="shapes-dit", steps=4, seed=5)
    for schedule in ("fp32*4", "fp32*2,skip*2"):
        app.evaluator.evaluate(settings, schedule)
    picker, first, second, token, note, rows = tab.open_tab(app, "shapes-dit", "", 5, 4, 64, 3.0, session="s1")
    assert token and "Which one" in note and picker["value"] and first["label"] == "A"
    with pytest.raises(gr.Error, match="one of first, second, unsure"):
        tab.answer(app, token, "left", "shapes-dit", picker["value"], "s1")  # refused before the pair is used up
    first, second, cleared, said, rows = tab.answer(app, token, "unsure", "shapes-dit", picker["value"], "s1")
    assert cleared is None and "full precision" in first["label"] + second["label"] and "can't tell" in said
    with pytest.raises(gr.Error, match="answered already"):
        tab.answer(app, token, "first", "shapes-dit", picker["value"], "s1")
    [counted] = store.blind_tallies([e.id for e in store.evaluations() if e.schedule == "fp32*2,skip*2"])
    assert (counted.answers, counted.unsure, counted.sessions) == (1, 1, 1)

    *_, token, _, _ = tab.show_pair(app, "shapes-dit", picker["value"], "s1")

    def refused(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    store.record_blind_answer = refused
    first, second, _, said, _ = tab.answer(app, token, "first", "shapes-dit", picker["value"], "s1")
    assert "full precision" in first["label"] + second["label"]  # revealed all the same
    [counted] = store.blind_tallies([e.id for e in store.evaluations() if e.schedule == "fp32*2,skip*2"])
    assert counted.answers == 1 and app.evaluator.not_kept == 1  # not counted, and said


def test_the_sessions_a_book_remembers_are_bounded_least_recent_first():
    book = BlindBook(outstanding=2)
    for session in ("a", "b", "c"):
        book.show(pair(session), session)
        book.take(session, session)
    assert list(book._answered) == ["b", "c"]
