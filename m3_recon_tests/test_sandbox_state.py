"""One sandbox M3: the demo, the UI and ``m3-recon sandbox`` share one persisted ledger per seed and period, and
``--reset`` starts over (the ledger and the warehouse that posted into it, never finance's decisions)."""

from datetime import date

from m3_recon.sandbox import SANDBOX_DATA, persisted_ledger_path, reset_sandbox_state


def test_one_ledger_per_seed_period_and_quirks():
    assert persisted_ledger_path() == persisted_ledger_path(7, date(2026, 10, 1), 31)
    assert persisted_ledger_path().parent == SANDBOX_DATA
    assert persisted_ledger_path(quirks=frozenset({"b", "a"})).name.endswith("_quirks-a-b.sqlite")
    assert persisted_ledger_path(seed=8) != persisted_ledger_path()


def test_reset_removes_the_ledger_and_the_warehouse_but_keeps_decisions(tmp_path, monkeypatch):
    files = {name: tmp_path / name for name in ("ledger.sqlite", "work.duckdb", "work.duckdb.wal", "analyst.duckdb",
                                                "decisions.jsonl")}
    for path in files.values():
        path.write_text("x")
    monkeypatch.setenv("M3_RECON_DUCKDB_PATH", str(files["work.duckdb"]))
    monkeypatch.setenv("M3_RECON_ANALYST_DUCKDB_PATH", str(files["analyst.duckdb"]))
    monkeypatch.setenv("M3_RECON_DECISIONS_FILE", str(files["decisions.jsonl"]))
    removed = reset_sandbox_state(files["ledger.sqlite"])
    assert sorted(p.name for p in removed) == ["analyst.duckdb", "ledger.sqlite", "work.duckdb", "work.duckdb.wal"]
    assert [p.name for p in tmp_path.iterdir()] == ["decisions.jsonl"]
    assert reset_sandbox_state(files["ledger.sqlite"]) == []  # nothing left to remove
