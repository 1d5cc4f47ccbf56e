"""One sandbox M3: the demo, the UI and ``m3-recon sandbox`` share one persisted ledger per seed and period, and
``--reset`` starts over (the ledger and the warehouse that posted into it, never finance's decisions)."""

from datetime import date, datetime, timezone

from m3_recon.sandbox import SANDBOX_DATA, Scale, flavour, persisted_ledger_path, reset_sandbox_state


def test_one_ledger_per_seed_period_and_quirks():
    assert persisted_ledger_path() == persisted_ledger_path(7, date(2026, 10, 1), 31)
    assert persisted_ledger_path().parent == SANDBOX_DATA
    assert persisted_ledger_path(quirks=frozenset({"b", "a"})).name.endswith("_quirks-a-b.sqlite")
    assert persisted_ledger_path(seed=8) != persisted_ledger_path()


def test_a_scaled_world_has_its_own_ledger_and_warehouse_name():
    assert persisted_ledger_path(scale=Scale()) == persisted_ledger_path()
    scaled = Scale(charges_per_day=100_000, customers=10_000)
    assert persisted_ledger_path(scale=scaled).name.endswith("_scale-100000c-10000u-defaulti.sqlite")
    assert flavour(frozenset({"a"}), "EUR", Scale(customers=90)) == "_quirks-a_local-EUR_scale-defaultc-90u-defaulti"


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


def test_partitions_end_at_the_last_complete_day_or_the_sandbox_period(sandbox, monkeypatch):
    from m3_recon.partitions import build_daily_partitions

    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)
    keys = build_daily_partitions().get_partition_keys()
    assert (keys[0], keys[-1], len(keys)) == ("2026-10-01", "2026-10-31", 31)  # a closed month is all there is
    monkeypatch.delenv("M3_RECON_END_DATE")
    keys = build_daily_partitions().get_partition_keys(current_time=datetime(2026, 11, 3, 1, tzinfo=timezone.utc))
    assert keys[-1] == "2026-11-02"  # the last day that has ended
