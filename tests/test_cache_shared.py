"""The same cache through a SQLAlchemy URL: SQLite and a real PostgreSQL server, with concurrent writers.

The PostgreSQL server is Debian's ``postgresql`` package, started here in a temporary folder on a
loopback port (as the ``postgres`` user when the tests run as root). Without it the PostgreSQL
cases skip with the reason; CI installs it (``make test`` does).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cache_records import png_bytes, record
from conftest import free_port, require_system_package

from tmpdiff.cache import Cache, CacheError

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = next((str(p) for p in (Path(shutil.which("initdb") or "/nonexistent").parent,
                                *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
               if (p / "initdb").exists()), None)


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres_url():
    require_system_package(PG_BIN, "postgresql", "PostgreSQL cache tests")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'psycopg[binary]'")
    folder = Path(tempfile.mkdtemp(prefix="tmpdiff-pg-"))  # not pytest's: the postgres user must reach it
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    subprocess.run(_as_postgres([f"{PG_BIN}/initdb", "-D", str(data), "-U", "tmpdiff", "--auth=trust"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                                 f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    yield f"postgresql+psycopg://tmpdiff@127.0.0.1:{port}/postgres"
    subprocess.run(_as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"]),
                   capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite-url", "postgresql"])
def location(request, tmp_path):
    if request.param == "sqlite-url":
        return f"sqlite:///{tmp_path / 'c.sqlite'}"
    url = request.getfixturevalue("postgres_url")
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:  # every test starts from an empty database
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url


def test_put_get_upsert_and_images_through_a_url(location):
    cache = Cache(location)
    first, again = cache.put(record(ssim=0.5)), cache.put(record(ssim=0.7))
    assert first == again and len(cache.evaluations()) == 1
    got = cache.get(record().key)
    assert got is not None and got.ssim == 0.7 and got.png == png_bytes()
    assert cache.get(record(seed=1).key) is None
    assert Cache(location).get(record().key).ssim == 0.7  # a second connection (another process) sees it


def test_search_runs_and_cost_tables_through_a_url(location):
    cache = Cache(location)
    row = cache.put(record())
    run = cache.start_search("tiny-sd15", {"steps": 4})
    cache.link_search(run, record().key)
    cache.link_search(run, record().key)  # linked twice: still one link
    cache.finish_search(run, {"schedule": "fp32*4"})
    [listed] = cache.search_runs()
    assert listed.evaluations == 1 and listed.finished and row > 0
    cache.put_costs("m", "s", "d", {"fp32": 1.0})
    cache.put_costs("m", "s", "d", {"fp32": 2.0})
    assert cache.get_costs("m", "s", "d") == {"fp32": 2.0}


def test_export_from_a_url_imports_into_a_file_and_back(location, tmp_path):
    source = Cache(location)
    for seed in range(3):
        source.put(record(seed=seed))
    exported = tmp_path / "e.json"
    assert source.export(exported) == 3
    local = Cache(tmp_path / "local.sqlite")
    assert local.import_(exported) == 3
    assert {r.seed for r in local.evaluations()} == {0, 1, 2}


WRITER = """
import sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from tmpdiff.cache import Cache
from cache_records import record
cache = Cache({url!r})
for seed in range(6):
    cache.put(record(seed=seed, ssim=0.5))            # every writer writes these six
    cache.put(record(seed=1000 * ({worker} + 1) + seed))  # and six of its own
print("done", flush=True)
"""


def test_eight_concurrent_writer_processes_lose_and_duplicate_nothing(location):
    Cache(location)  # the schema exists before the writers start (they would create it safely too)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), tests=str(ROOT / "tests"),
                                                                       url=location, worker=w)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(8)]
    outputs = [w.communicate(timeout=300) for w in writers]
    assert all(w.returncode == 0 for w in writers), [err[-1000:] for _, err in outputs]
    seeds = [row.seed for row in Cache(location).evaluations()]
    assert len(seeds) == len(set(seeds)) == 6 + 8 * 6
    assert all(Cache(location).get(record(seed=s).key) is not None for s in range(6))


OPENER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tmpdiff.cache import Cache
folder = Path({folder!r})
for round_, location in enumerate({locations!r}):
    while not (folder / f"go-{{round_}}").exists():  # every opener starts the round at the same moment
        time.sleep(0.001)
    Cache(location)
    (folder / f"opened-{{round_}}-{worker}").touch()
"""


OPENERS = 4


def test_processes_opening_a_new_database_at_once_all_open_it(location, tmp_path):
    """The processes of a ``--parallel`` launch or Ray actors may create a new cache together: each sees either
    no table or the whole schema with its version (once, a process saw tables without the version row)."""
    import time

    rounds = [location] if location.startswith("postgresql") else [
        f"sqlite:///{tmp_path / f'new-{i}.sqlite'}" for i in range(12)]
    openers = [subprocess.Popen([sys.executable, "-c", OPENER.format(root=str(ROOT), folder=str(tmp_path),
                                                                     locations=rounds, worker=w)],
                                stderr=subprocess.PIPE, text=True) for w in range(OPENERS)]
    for round_ in range(len(rounds)):
        (tmp_path / f"go-{round_}").touch()
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob(f"opened-{round_}-*"))) < OPENERS and all(p.poll() is None for p in openers):
            assert time.monotonic() < deadline, f"round {round_}: the openers are stuck"
            time.sleep(0.01)
    errors = [p.communicate(timeout=60)[1] for p in openers]
    assert all(p.returncode == 0 for p in openers), [e[-600:] for e in errors if e]
    assert all(Cache(where).evaluations() == [] for where in rounds)


def test_a_bad_url_or_an_unreachable_server_is_a_one_line_cache_error(tmp_path):
    with pytest.raises(CacheError, match="SQLite .* or PostgreSQL"):
        Cache("mysql://u@localhost/db")
    with pytest.raises(CacheError, match="cannot reach the database"):
        Cache(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")


def test_a_server_that_accepts_but_never_answers_times_out_instead_of_hanging():
    import socket
    import time

    from sqlalchemy.engine import make_url

    from tmpdiff.cache.connection import server_timeouts as _server_timeouts

    assert _server_timeouts(make_url("postgresql+psycopg://u@h/d")) == {
        "connect_timeout": 10, "options": "-c statement_timeout=60000"}
    assert _server_timeouts(make_url("postgresql+psycopg://u@h/d?connect_timeout=3")) == {
        "options": "-c statement_timeout=60000"}
    with socket.socket() as silent:  # listens, never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        with pytest.raises(CacheError, match="cannot reach the database"):
            Cache(f"postgresql+psycopg://nobody@127.0.0.1:{silent.getsockname()[1]}/none?connect_timeout=2")
        assert time.monotonic() - start < 30


def test_the_app_shows_what_other_processes_wrote_to_the_shared_cache(location, tmp_path):
    from gradio_client import Client

    import app

    for schedule in ("fp32*8", "fp32*4,skip*4"):  # a worker elsewhere: another process, the same --db
        done = subprocess.run([sys.executable, "-m", "tmpdiff", "generate", "--schedule", schedule, "--db", location,
                               "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    port = free_port()
    demo = app.build(app.parse_args(["--db", location, "--port", str(port)]))
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        _, table = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/pareto")
    finally:
        demo.close()
    assert {row[0] for row in table["data"]} == {"fp32*8", "fp32*4,skip*4"}


def _entries_without_ids(path):
    import json

    entries = json.loads(path.read_text())["evaluations"]
    return [{k: v for k, v in entry.items() if k != "id"} for entry in entries]


def test_an_export_imports_into_its_own_database_as_nothing_and_into_an_empty_one_as_every_row(location, tmp_path):
    import dataclasses

    from tmpdiff.memory.meter import MemoryFigures

    source = Cache(location)
    identical = dataclasses.replace(record("fp32*4", seed=9), ssim=1.0, psnr=float("inf"), lpips=0.0,
                                    peak_bytes=123456, memory=MemoryFigures(123456, "host"))
    for each in (record(seed=0), record("fp32*2,skip*2", seed=1), identical):
        source.put(each)
    first = tmp_path / "first.json"
    assert source.export(first) == 3
    assert source.import_(first) == 0  # the same rows: nothing to store, nothing refused
    assert source.get(identical.key).psnr == float("inf")  # NULL in the database, null in the file, inf in memory
    empty = Cache(tmp_path / "empty.sqlite")
    assert empty.import_(first) == 3
    again = tmp_path / "again.json"
    empty.export(again)
    assert _entries_without_ids(again) == _entries_without_ids(first)  # keys, scores, times, image bytes
    assert source.import_(again) == 0 and empty.import_(again) == 0
