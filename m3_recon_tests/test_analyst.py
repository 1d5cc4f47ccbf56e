"""Analysts read a published copy: a reader holding it open in another process during a close neither
blocks the close nor sees a half-written day, and the next connection sees the new close."""

import multiprocessing
import time

import duckdb

from m3_recon_tests.conftest import close_definitions, run_close

READER_SECONDS = 120  # bounded: the reader stops by itself


def hold_open_and_read(path: str, ready, stop, results) -> None:
    conn = duckdb.connect(path, read_only=True)
    seen = set()
    ready.set()
    deadline = time.monotonic() + READER_SECONDS
    while not stop.is_set() and time.monotonic() < deadline:
        seen.add(conn.execute("SELECT (SELECT count(*) FROM core_settlement_lines), "
                              "(SELECT count(*) FROM v_payout_status), "
                              "(SELECT count(DISTINCT settlement_date) FROM core_settlement_lines)").fetchone())
        time.sleep(0.05)
    results.put(sorted(seen))
    conn.close()


def test_a_reader_holding_the_analyst_copy_open_does_not_block_the_close(sandbox_environment, tmp_path, monkeypatch):
    sandbox = sandbox_environment
    analyst = str(tmp_path / "analyst.duckdb")
    monkeypatch.setenv("M3_RECON_ANALYST_DUCKDB_PATH", analyst)
    definitions = close_definitions(str(tmp_path / "work.duckdb"))
    first = sandbox.period.start.isoformat()
    assert run_close(definitions, first, "2026-10-10").success  # the first close publishes ten days

    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    reader = context.Process(target=hold_open_and_read, args=(analyst, ready, stop, results))
    reader.start()
    try:
        assert ready.wait(30)
        result = run_close(definitions, first, "2026-10-20")  # a second close publishes twenty days meanwhile
        assert result.success
    finally:
        stop.set()
        seen = results.get(timeout=60)
        reader.join(30)
    assert len(seen) == 1 and seen[0][2] == 10  # the reader saw one consistent close: the one it opened
    with duckdb.connect(analyst, read_only=True) as conn:
        assert conn.execute("SELECT count(DISTINCT settlement_date) FROM core_settlement_lines").fetchone() == (20,)
