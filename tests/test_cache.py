"""The SQLite cache: hits without the model, concurrency, crashes, foreign files, export/import."""

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest
from cache_records import png_bytes, record

from tmpdiff.cache import Cache, CacheError
from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator
from tmpdiff.memory.meter import MemoryFigures


def test_put_get_and_upsert(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    first = cache.put(record(ssim=0.5))
    again = cache.put(record(ssim=0.7))
    assert first == again
    got = cache.get(record().key)
    assert got is not None and got.ssim == 0.7 and got.png == png_bytes()
    assert len(cache.evaluations()) == 1
    assert cache.get(record(seed=1).key) is None
    images = list(cache.images.iterdir())
    assert len(images) == 1 and len(images[0].stem) == 64  # named by content hash


class NoModelEngine(Engine):
    def pipeline(self, model):
        raise AssertionError("a cache hit must not touch the model")


def test_a_hit_returns_image_and_metrics_without_the_model(tmp_path):
    """How fast a hit is, is measured in ``benchmarks/latency_model.py``, not here."""
    cache = Cache(tmp_path / "c.sqlite")
    settings = RunSettings(model="tiny-sd15", steps=4)
    Evaluator(Engine("cpu"), cache).evaluate(settings, "fp32*2,int8wo*2")
    evaluator = Evaluator(NoModelEngine("cpu"), cache)
    hit = evaluator.evaluate(settings, "fp32*2,int8wo*2")
    assert hit.cached and hit.image.size == (32, 32) and 0 < hit.record.ssim < 1


def test_eight_threads_write_at_once_without_locking_errors(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    errors = []

    def write(thread):
        try:
            for i in range(25):
                cache.put(record(seed=thread * 100 + i))
        except Exception as exc:  # collect, assert below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(cache.evaluations()) == 200


WRITER = """
import sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from tmpdiff.cache import Cache
from cache_records import record
cache = Cache({db!r})
for i in range(100000):
    cache.put(record(seed=i))
    print(i, flush=True)
"""


def test_sigkill_mid_write_leaves_a_sound_database_with_every_finished_row(tmp_path):
    from conftest import ROOT

    db = tmp_path / "c.sqlite"
    code = WRITER.format(root=str(ROOT), tests=str(ROOT / "tests"), db=str(db))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    finished = -1
    for line in child.stdout:
        finished = int(line)
        if finished >= 60:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()
    seeds = {row.seed for row in Cache(db).evaluations()}
    assert set(range(finished + 1)) <= seeds


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(CacheError, match="is not a SQLite database"):
        Cache(bad)


def rewritten(path, *statements):
    """The SQLite file at ``path`` after ``statements`` (as another tmpdiff, or a person, would have left it)."""
    connection = sqlite3.connect(path)
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()


AS_SCHEMA_2 = ("alter table evaluations drop column reference_seconds",
               "alter table blind_answers drop column session",
               "update meta set value = '2' where key = 'schema_version'")


def test_a_database_of_another_schema_is_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    rewritten(other, "create table people (name text)")
    with pytest.raises(CacheError, match="another schema"):
        Cache(other)


def test_a_version_2_cache_is_brought_to_version_3_in_place_keeping_every_row(tmp_path):
    """The columns version 3 adds (the reference timed beside each image, the session of each blind answer) are
    added to a version 2 database; its rows, and its blind answers, stay as they were."""
    import dataclasses

    path = tmp_path / "c.sqlite"
    store = Cache(path)
    row_id = store.put(record("fp32*2,skip*2"))
    store.record_blind_answer(row_id, "right")
    store.engine.dispose()
    rewritten(path, *AS_SCHEMA_2)  # what tmpdiff with schema 2 wrote
    from tmpdiff.errors import CacheWarning

    with pytest.warns(CacheWarning, match=r"brought from schema 2 to 3 \(added: the reference's seconds.*can no "
                                          r"longer open it"):
        migrated = Cache(path)
    kept = migrated.get(record("fp32*2,skip*2").key)
    assert kept is not None and kept.png == png_bytes() and kept.reference_seconds is None
    [tally] = migrated.blind_tallies([row_id])
    assert (tally.right, tally.sessions) == (1, 0)  # answered before sessions were kept: counted, no session
    timed = dataclasses.replace(record("fp32*3,skip"), reference_seconds=0.7)
    migrated.put(timed)
    assert migrated.get(timed.key).reference_seconds == 0.7
    assert sqlite3.connect(path).execute("select value from meta where key = 'schema_version'").fetchone() == ("3",)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        Cache(path)  # migrated once: said once


def test_a_cache_written_by_a_newer_tmpdiff_is_refused_in_plain_words(tmp_path):
    path = tmp_path / "c.sqlite"
    Cache(path).engine.dispose()
    rewritten(path, "update meta set value = '9' where key = 'schema_version'")
    with pytest.raises(CacheError, match="schema 9, written by a newer tmpdiff .* upgrade tmpdiff on this machine"):
        Cache(path)


def test_the_reference_seconds_timed_beside_an_image_travel_with_its_export(tmp_path):
    import dataclasses

    source = Cache(tmp_path / "a.sqlite")
    source.put(dataclasses.replace(record("fp32*2,int8*2"), reference_seconds=1.25))
    exported = tmp_path / "ex.json"
    source.export(exported)
    target = Cache(tmp_path / "b.sqlite")
    assert target.import_(exported) == 1 and target.import_(exported) == 0
    assert target.get(record("fp32*2,int8*2").key).reference_seconds == 1.25
    payload = json.loads(exported.read_text())
    for bad in (-1, 0, "1.0", 1e12, True):
        payload["evaluations"][0]["reference_seconds"] = bad
        exported.write_text(json.dumps(payload))
        with pytest.raises(CacheError, match="reference_seconds"):
            Cache(tmp_path / "c.sqlite").import_(exported)
    payload["evaluations"][0].pop("reference_seconds")  # an export written before it was kept
    exported.write_text(json.dumps(payload))
    assert Cache(tmp_path / "d.sqlite").import_(exported) == 1


def test_export_import_round_trip_and_validation(tmp_path):
    source = Cache(tmp_path / "a.sqlite")
    source.put(record("fp32*2,int8*2"))
    exported = tmp_path / "ex.json"
    assert source.export(exported) == 1
    target = Cache(tmp_path / "b.sqlite")
    assert target.import_(exported) == 1
    assert target.get(record("fp32*2,int8*2").key).png == png_bytes()

    payload = json.loads(exported.read_text())
    payload["evaluations"][0]["schedule"] = "__import__('os').system('x')"
    exported.write_text(json.dumps(payload))
    with pytest.raises(CacheError, match="entry 0: malformed schedule token"):
        target.import_(exported)
    payload["evaluations"][0]["schedule"] = "fp32*4"
    payload["evaluations"][0]["steps_run"] = ["fp32"] * 4
    payload["evaluations"][0]["png_base64"] = "bm90IGEgcG5n"
    exported.write_text(json.dumps(payload))
    with pytest.raises(CacheError, match="not a PNG"):
        target.import_(exported)


def test_cli_second_generate_is_a_hit_and_bad_db_is_one_line(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tmpdiff", "generate", "--model", "tiny-sd15", "--steps", "4",
                               "--out", str(tmp_path / "x.png"), *args], capture_output=True, text=True, timeout=300)

    db = str(tmp_path / "c.sqlite")
    first, second = cli("--db", db), cli("--db", db)
    assert json.loads(first.stdout)["cached"] is False
    assert json.loads(second.stdout)["cached"] is True
    assert json.loads(cli("--db", db, "--no-cache").stdout)["cached"] is False
    (tmp_path / "junk.db").write_text("junk")
    bad = cli("--db", str(tmp_path / "junk.db"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ") and "not a SQLite database" in bad.stderr


def test_import_refuses_non_finite_numbers_unknown_models_and_never_overwrites_without_replace(tmp_path, capsys):
    from tmpdiff.cli.entry import main

    source = Cache(tmp_path / "a.sqlite")
    source.put(record("fp32*4", ssim=1.0))
    exported = tmp_path / "ex.json"
    source.export(exported)
    target = Cache(tmp_path / "b.sqlite")
    assert target.import_(exported) == 1
    assert target.import_(exported) == 0  # the same evaluation again: nothing to store
    payload = json.loads(exported.read_text())
    for field, value, message in (("ssim", float("nan"), "NaN is not a number JSON holds"),
                                  ("measured_seconds", float("inf"), "Infinity is not a number JSON holds"),
                                  ("model", "sd9", "unknown model 'sd9'")):
        bad = json.loads(json.dumps(payload))
        bad["evaluations"][0][field] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(CacheError, match=message):
            target.import_(tmp_path / "bad.json")
    bad = json.loads(json.dumps(payload))
    bad["evaluations"][0]["settings"]["steps"] = 8
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CacheError, match="the schedule has 4 steps, settings say 8"):
        target.import_(tmp_path / "bad.json")
    changed = json.loads(json.dumps(payload))
    changed["evaluations"][0]["ssim"] = 0.5
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    with pytest.raises(CacheError, match="1 entries .* differ from evaluations already stored.*pass replace to"):
        target.import_(tmp_path / "changed.json")
    assert target.get(record("fp32*4").key).ssim == 1.0  # unchanged
    assert main(["cache", "import", str(tmp_path / "changed.json"), "--db", str(tmp_path / "b.sqlite")]) == 2
    assert "pass --replace to overwrite them" in capsys.readouterr().err  # the engine's field, in the CLI's words
    assert target.get(record("fp32*4").key).ssim == 1.0
    assert main(["cache", "import", str(tmp_path / "changed.json"), "--db", str(tmp_path / "b.sqlite"),
                 "--replace"]) == 0
    assert target.get(record("fp32*4").key).ssim == 0.5


def test_a_database_whose_wal_files_cannot_be_written_is_read_not_refused(tmp_path):
    import os
    import warnings

    from tmpdiff.engine.runner import Engine
    from tmpdiff.engine.settings import RunSettings
    from tmpdiff.measure.evaluator import Evaluator

    settings = RunSettings(model="shapes-dit", steps=4)
    store = Cache(tmp_path / "c.sqlite")
    Evaluator(Engine("cpu"), store).evaluate(settings, "fp32*4")
    store.engine.dispose()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"c.sqlite{suffix}").unlink(missing_ok=True)
    os.mkdir(tmp_path / "c.sqlite-shm")  # SQLite cannot make its shared-memory file (as in a read-only folder)
    with pytest.warns(UserWarning, match="open read-only .*new ones are not kept"):
        store = Cache(tmp_path / "c.sqlite")
    assert store.read_only and len(store.evaluations()) == 1
    evaluator = Evaluator(Engine("cpu"), store)
    assert evaluator.evaluate(settings, "fp32*4").cached  # what was stored is served
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = evaluator.evaluate(settings, "fp32*2,skip*2")  # a new result is shown, not kept
    assert not fresh.cached and fresh.image is not None and "readonly" in evaluator.store_error
    assert len(store.evaluations()) == 1


HOSTILE = ["__NaN__", "__Infinity__", "__-Infinity__", "__1" + "0" * 400 + "__", "__-99999999999999999999999__",
           None, True, -1, -3.0, 5.0, 10**12, "", "x" * 100_000, [], {}, [[[[["deep"]]]]], {"aaaaaaaaaa": "b"},
           "fp32*4", "../../etc/passwd", ["fp32"] * 100_000]
SETTINGS_ATTACKS = [("seed", None), ("seed", 2**64), ("prompt", "p" * 1_000_000), ("guidance", "__NaN__"),
                    ("aaaaaaaaaa", "b"), ("steps", 10**6), ("size", -8), ("prompt", "  red circle  "),
                    ("model", "sd9"), ("negative_prompt", 7)]


def _hostile_file(payload, rng):
    """``payload`` with one to three entries changed the way an attacker or a broken tool would; raw JSON tokens
    (NaN, overflowing numbers) are spliced into the text."""
    bad = json.loads(json.dumps(payload))
    for _ in range(rng.randint(1, 3)):
        entry = rng.choice(bad["evaluations"])
        where = rng.random()
        if where < 0.3:
            key, value = rng.choice(SETTINGS_ATTACKS)
            if rng.random() < 0.3:
                entry["settings"].pop(rng.choice(sorted(entry["settings"])), None)
            else:
                entry["settings"][key] = value
        elif where < 0.4:
            entry[rng.choice(["device", "memory"])] = {"device": rng.choice(HOSTILE)}
        else:
            entry[rng.choice(sorted(entry))] = rng.choice(HOSTILE)
    text = json.dumps(bad)
    for token in ("NaN", "Infinity", "-Infinity", "1" + "0" * 400, "-99999999999999999999999"):
        text = text.replace(f'"__{token}__"', token)
    return text


def test_whatever_an_import_is_fed_the_database_is_unchanged_or_holds_exactly_the_file(tmp_path):
    import random

    source = Cache(tmp_path / "source.sqlite")
    for seed in range(3):
        source.put(record(f"fp32*{2 + seed},skip*{2 - seed}" if seed < 2 else "fp32*4", seed=seed))
    valid = tmp_path / "valid.json"
    source.export(valid)
    payload = json.loads(valid.read_text())
    target = Cache(tmp_path / "target.sqlite")
    target.put(record("fp32*3,skip", seed=40))
    before = tmp_path / "before.json"
    target.export(before)
    rng, outcomes = random.Random(20261204), {"refused": 0, "imported": 0}
    for trial in range(80):
        hostile = tmp_path / f"hostile{trial}.json"
        hostile.write_text(_hostile_file(payload, rng))
        try:
            target.import_(hostile)
        except CacheError as exc:
            assert len(str(exc)) < 700 and "\n" not in str(exc)  # one bounded line, never a value echoed whole
            outcomes["refused"] += 1
            after = tmp_path / "after.json"
            target.export(after)
            assert after.read_text() == before.read_text(), f"trial {trial} changed the database and was refused"
            continue
        outcomes["imported"] += 1
        from tmpdiff.cache.transfer import parse_export, same_record

        entries = parse_export(hostile)
        assert len(target.evaluations()) == 1 + len({e.record.key.digest for e in entries})  # the row before, and
        assert all(same_record(target.get(e.record.key), e.record) for e in entries)  # exactly the file's
        target = Cache(tmp_path / f"target{trial}.sqlite")  # a fresh database for the next trial
        target.put(record("fp32*3,skip", seed=40))
        target.export(before)
    assert outcomes["refused"] > 60, outcomes  # the generator does attack
    assert outcomes["imported"] > 0, outcomes  # and some changes are harmless (a memory record, a time)


def test_an_import_that_overflows_is_one_line_and_changes_nothing(tmp_path):
    source = Cache(tmp_path / "a.sqlite")
    source.put(record("fp32*4"))
    exported = tmp_path / "ex.json"
    source.export(exported)
    text = exported.read_text().replace('"measured_seconds": 1.0', '"measured_seconds": 1' + "0" * 400)
    (tmp_path / "big.json").write_text(text)
    result = subprocess.run([sys.executable, "-m", "tmpdiff", "cache", "import", str(tmp_path / "big.json"), "--db",
                             str(tmp_path / "b.sqlite")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "too large" in line and len(line) < 400
    assert Cache(tmp_path / "b.sqlite").evaluations() == []


@pytest.mark.parametrize(("junk", "said"), [
    (b" " * 2**27, "does not open with '{'"),
    (b"{" + b" " * 2**27 + b"}", "megabyte of bare whitespace"),
    (b'{"format": "' + bytes(range(128, 256)) * 2**19, "decode"),
])
def test_junk_posing_as_an_export_is_refused_after_a_chunk_not_read_whole(tmp_path, junk, said):
    import tracemalloc

    from tmpdiff.cache.transfer import parse_export_file

    path = tmp_path / "junk.json"
    path.write_bytes(junk)
    del junk
    tracemalloc.start()
    try:
        with pytest.raises(CacheError, match="is not a tmpdiff export") as refused:
            parse_export_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert said in str(refused.value)
    assert peak < 8 * 2**20, peak  # a couple of megabyte chunks, not the 128 MiB file


CUT_SHORT = """
import os, sys, warnings
from tmpdiff.cache import Cache
from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator

path = sys.argv[1]
evaluator = Evaluator(Engine("cpu"), Cache(path))
settings = RunSettings(model="shapes-dit", steps=4)
evaluator.evaluate(settings, "fp32*4")
os.truncate(path + "-shm", 0)  # another program cuts the shared memory short under this process
with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter("always")
    kept = evaluator.evaluate(settings, "fp32*2,skip*2").kept
print(kept, len(evaluator.store.evaluations()), "|".join(str(w.message) for w in said))
"""


def test_a_shared_memory_file_cut_short_under_a_running_process_costs_a_warning_not_the_process(tmp_path):
    result = subprocess.run([sys.executable, "-c", CUT_SHORT, str(tmp_path / "c.sqlite")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])  # -7 (SIGBUS) before the guard
    kept, rows, said = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert kept == "True" and rows == "2" and "c.sqlite-shm was cut short" in said  # the reference and this


MADE_IMMUTABLE = """
import subprocess, sys
from tmpdiff.cache import Cache
from tmpdiff.cache.connection import CacheError
from tmpdiff.engine.runner import Engine
from tmpdiff.engine.settings import RunSettings
from tmpdiff.measure.evaluator import Evaluator

path = sys.argv[1]
evaluator = Evaluator(Engine("cpu"), Cache(path))
settings = RunSettings(model="shapes-dit", steps=4)
evaluator.evaluate(settings, "fp32*4")
subprocess.run(["chattr", "+i", path + "-shm"], check=True)  # writes through SQLite's mapping now fault
try:
    evaluator.evaluate(settings, "fp32*2,skip*2")
except CacheError as exc:
    print("refused:", exc)
"""


def _can_make_immutable(folder):
    probe = folder / "probe"
    probe.touch()
    made = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0 if shutil.which(
        "chattr") else False
    if made:
        subprocess.run(["chattr", "-i", str(probe)], check=True)
    return made


def test_a_shared_memory_file_made_immutable_under_a_running_process_is_refused_in_words_not_a_sigbus(tmp_path):
    if not _can_make_immutable(tmp_path):
        pytest.skip("needs chattr and the right to set the immutable flag (root on ext4, xfs or btrfs)")
    path = tmp_path / "c.sqlite"
    try:
        result = subprocess.run([sys.executable, "-c", MADE_IMMUTABLE, str(path)], capture_output=True, text=True,
                                timeout=120)
    finally:
        subprocess.run(["chattr", "-i", f"{path}-shm"], capture_output=True)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])  # -7 (SIGBUS) before the guard
    said = result.stdout.strip().splitlines()[-1]
    assert said.startswith("refused:") and "c.sqlite-shm is immutable" in said and "chattr -i" in said
    assert len(Cache(path).evaluations()) == 1  # the cache is whole again once the flag is gone


def every_table(store):
    """Each table of a cache as comparable facts, evaluations named by their keys (ids differ between databases)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from tmpdiff.cache.schema import BlindAnswerRow, CostTableRow, EvaluationRow, SearchRunRow

    def naive(when):
        return None if when is None else when.replace(tzinfo=None).isoformat()

    with Session(store.engine) as session:
        rows = {row.id: row for row in session.scalars(select(EvaluationRow))}
        key = {i: (r.model, r.settings_hash, r.schedule_hash, r.device_hash) for i, r in rows.items()}
        evaluations = sorted((key[i], r.image_sha256, r.ssim, r.measured_seconds, r.reference_seconds, r.memory,
                              naive(r.created_at)) for i, r in rows.items())
        answers = sorted(((key[a.evaluation_id], a.answer, a.session, naive(a.created_at))
                          for a in session.scalars(select(BlindAnswerRow))), key=repr)
        runs = sorted([(r.model, json.dumps(r.request, sort_keys=True), json.dumps(r.result, sort_keys=True),
                        naive(r.started_at), naive(r.finished_at),
                        tuple(sorted(key[link.evaluation_id] for link in r.evaluations)))
                       for r in session.scalars(select(SearchRunRow))], key=repr)
        costs = sorted((c.model_hash, c.settings_hash, c.device_hash, json.dumps(c.table, sort_keys=True))
                       for c in session.scalars(select(CostTableRow)))
    return {"evaluations": evaluations, "blind_answers": answers, "search_runs": runs, "cost_tables": costs}


def test_a_cache_moved_by_export_and_import_keeps_every_table_and_a_second_import_adds_nothing(tmp_path):
    import dataclasses

    from tmpdiff.cache import Moved
    from tmpdiff.measure.latency import CostTable

    source = Cache(tmp_path / "a.sqlite")
    ids = [source.put(dataclasses.replace(record(s, ssim=0.8), reference_seconds=1.1))
           for s in ("fp32*4", "fp32*2,skip*2", "fp32*3,skip")]
    for answer, session in (("right", "s1"), ("wrong", "s1"), ("unsure", "s2"), ("right", None)):
        source.record_blind_answer(ids[1], answer, session)
    run = source.start_search("tiny-sd15", {"ladder": ["fp32", "skip"], "seeds": [0]})
    for s in ("fp32*2,skip*2", "fp32*3,skip"):
        source.link_search(run, record(s).key)
    source.finish_search(run, {"schedule": "fp32*2,skip*2", "ssim": 0.8})
    source.start_search("tiny-sd15", {"ladder": ["fp32"], "seeds": [1]})  # cancelled: never finished
    table = CostTable(device="cpu", compiled=False, steps=4, step_seconds={"fp32": 0.03, "skip": 0.001})
    source.put_costs("abc", "def", "ghi", table.to_dict())

    exported = tmp_path / "all.json"
    assert source.export_all(exported) == Moved(3, 4, 2, 1)
    target = Cache(tmp_path / "b.sqlite")
    assert target.import_all(exported) == Moved(3, 4, 2, 1)
    assert every_table(target) == every_table(source)  # every table, row for row
    assert target.import_all(exported) == Moved(0, 0, 0, 0)  # idempotent
    assert source.import_all(exported) == Moved(0, 0, 0, 0)  # into its own cache: nothing counted twice
    assert every_table(source) == every_table(target)

    payload = json.loads(exported.read_text())  # an export of version 1 (evaluations only) still imports
    old = tmp_path / "v1.json"
    old.write_text(json.dumps({"format": payload["format"], "version": 1, "evaluations": payload["evaluations"]}))
    assert Cache(tmp_path / "c.sqlite").import_all(old) == Moved(3, 0, 0, 0)


@pytest.mark.parametrize(("part", "change", "says"), [
    ("blind_answers", {"answer": "yes"}, "one of right, wrong, unsure"),
    ("blind_answers", {"evaluation": 7}, "the place of an evaluation"),
    ("blind_answers", {"session": "x" * 33}, "1 to 32 characters"),
    ("search_runs", {"evaluations": [0, 99]}, "places? of"),
    ("search_runs", {"model": "no-such-model"}, "unknown model"),
    ("search_runs", {"request": "not an object"}, "must be an object"),
    ("search_runs", {"started_at": "yesterday"}, "ISO 8601"),
    ("cost_tables", {"table": {"version": 1}}, "not a cost table"),
    ("cost_tables", {"model_hash": ""}, "1 to 32 characters"),
])
def test_every_part_of_an_export_is_checked_before_anything_is_written(tmp_path, part, change, says):
    from tmpdiff.measure.latency import CostTable

    source = Cache(tmp_path / "a.sqlite")
    row = source.put(record("fp32*2,skip*2"))
    source.record_blind_answer(row, "right", "s1")
    source.link_search(source.start_search("tiny-sd15", {"seeds": [0]}), record("fp32*2,skip*2").key)
    source.put_costs("abc", "def", "ghi", CostTable(device="cpu", compiled=False, steps=4,
                                                    step_seconds={"fp32": 0.03}).to_dict())
    exported = tmp_path / "all.json"
    source.export_all(exported)
    payload = json.loads(exported.read_text())
    payload[part][0].update(change)
    exported.write_text(json.dumps(payload))
    target = Cache(tmp_path / "b.sqlite")
    with pytest.raises(CacheError, match=f"{part} entry 0: .*{says}"):
        target.import_all(exported)
    assert every_table(target) == {"evaluations": [], "blind_answers": [], "search_runs": [], "cost_tables": []}


@pytest.mark.parametrize(("change", "says"), [
    ({"memory": {"peak_gib": 1.0, "budget_gib": 1e300}}, "memory.budget_gib"),
    ({"memory": {"peak_gib": 5.0}}, "does not agree with 'peak_bytes'"),
    ({"memory": {"peak_gib": 1.0, "where": "moon"}}, "memory.where"),
    ({"memory": {"peak_gib": 1.0, "secret": 1}}, "unknown keys"),
    ({"memory": {"peak_gib": 1.0, "resident_gib": {"fp8": -3}}}, "memory.resident_gib"),
    ({"peak_bytes": -1}, "from 0 to 2\\*\\*50 - 1"),
    ({"peak_bytes": 2**50}, "from 0 to 2\\*\\*50 - 1"),
    ({"settings": {"guidance": "3"}}, "'guidance' is '3', of the wrong type"),
    ({"device": {"x": "y"}}, "not a device fingerprint"),
    ({"device": {"device": "cpu", "nested": {"a": 1}}}, "not a device fingerprint"),
    ({"model_hash": ""}, "model_hash"),
    ({"steps_run": ["fp32", "fp32", "fp32", "fp32"], "schedule": "fp32*2,skip*2"}, "not the schedule's steps"),
    ({"simulated": ["int8"]}, "names precisions the schedule has not"),
])
def test_an_import_checks_nested_objects_and_facts_that_must_agree(tmp_path, change, says):
    source = Cache(tmp_path / "a.sqlite")
    source.put(dataclasses_replace(record("fp32*2,skip*2"), peak_bytes=2**30,
                                   memory=MemoryFigures(2**30, "gpu")))
    exported = tmp_path / "ex.json"
    source.export(exported)
    payload = json.loads(exported.read_text())
    entry = payload["evaluations"][0]
    for name, value in change.items():
        if isinstance(value, dict) and name in ("settings", "device") and "x" not in value:
            entry[name] = {**entry[name], **value} if name == "settings" else value
        else:
            entry[name] = value
    exported.write_text(json.dumps(payload))
    target = Cache(tmp_path / "b.sqlite")
    with pytest.raises(CacheError, match=f"entry 0: .*{says}"):
        target.import_(exported)
    assert target.evaluations() == []


def dataclasses_replace(value, **changes):
    import dataclasses

    return dataclasses.replace(value, **changes)


def test_a_db_that_is_not_a_regular_file_is_refused_before_anything_waits_or_is_written_beside_it(tmp_path):
    import os

    fifo = tmp_path / "pipe.sqlite"
    os.mkfifo(fifo)
    with pytest.raises(CacheError, match="is not a regular file"):
        Cache(fifo)  # opening a FIFO for reading would wait for a writer forever
    with pytest.raises(CacheError, match="is not a regular file"):
        Cache("/dev/null")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.sqlite"]  # nothing made beside it


def test_a_cache_that_cannot_be_migrated_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from tmpdiff.cache import migrations

    path = tmp_path / "c.sqlite"
    Cache(path).engine.dispose()
    rewritten(path, *AS_SCHEMA_2)

    def read_only(connection):  # what a read-only file or database role answers to ALTER TABLE
        raise OperationalError("ALTER TABLE", {}, sqlite3.OperationalError("attempt to write a readonly database"))

    monkeypatch.setitem(migrations.STEPS, 2, read_only)
    with pytest.raises(CacheError) as refused:
        Cache(path)
    message = str(refused.value)
    assert ("schema 2" in message or "version 2" in message) and "\n" not in message and "Traceback" not in message
    assert "read-only" in message or "write access" in message


def test_a_database_url_that_cannot_be_parsed_is_told_as_such():
    for url in ("postgresql+psycopg://[::1", "postgresql+psycopg://user@host:port/db"):
        with pytest.raises(CacheError, match="neither a file path nor a database URL"):
            Cache(url)
