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


def test_each_view_adds_up_to_the_tables_it_comes_from(closed_books):
    with duckdb.connect(closed_books.env["M3_RECON_ANALYST_DUCKDB_PATH"], read_only=True) as conn:
        one = lambda sql: conn.execute(sql).fetchone()  # noqa: E731
        # one row per payment not applied automatically, candidates as a list
        assert one("SELECT count(*), count(DISTINCT (processor, source_id)), sum(payment_amount_minor) "
                   "FROM v_unmatched_payments") == one(
            "SELECT count(*), count(*), sum(amount) FROM (SELECT processor, source_id, any_value(payment_amount_minor) "
            "AS amount FROM core_payment_allocations WHERE line_type = 'charge' AND status <> 'auto' GROUP BY ALL)")
        assert one("SELECT count(*) FROM v_unmatched_payments WHERE len(candidates) > 1")[0] > 0
        assert one("SELECT count(*) FROM v_unmatched_payments WHERE age_days <> "
                   "date_diff('day', settlement_date, current_date)") == (0,)
        # exceptions by age: every open exception once, per currency, aged from its settlement date
        assert conn.execute("SELECT currency, sum(exceptions), sum(amount_minor) FROM v_open_exceptions_by_age "
                            "GROUP BY 1 ORDER BY 1").fetchall() == conn.execute(
            "SELECT currency, count(*), coalesce(sum(amount_minor), 0) FROM out_recon_exceptions WHERE status = 'open' "
            "GROUP BY 1 ORDER BY 1").fetchall()
        assert one("SELECT max(oldest_days) FROM v_open_exceptions_by_age") == one(
            "SELECT max(date_diff('day', settlement_date, current_date)) FROM out_recon_exceptions WHERE status = 'open'")
        # the GL by account and period carries both routes, with names, and balances per currency and period
        gl_debits, cash_debits = one("SELECT coalesce(sum(amount_minor) FILTER (amount_minor > 0), 0) "
                                     "FROM core_gl_journal_lines WHERE held_reason IS NULL")[0], \
            one("SELECT sum(local_minor) FROM core_cash_applications")[0]
        assert cash_debits > 0
        assert one("SELECT sum(debit_minor), sum(credit_minor), sum(balance_minor) FROM v_gl_by_account_period") == (
            gl_debits + cash_debits, gl_debits + cash_debits, 0)
        assert conn.execute("SELECT period, currency FROM v_gl_by_account_period GROUP BY ALL "
                            "HAVING sum(balance_minor) <> 0").fetchall() == []
        names = dict(conn.execute("SELECT DISTINCT account, account_name FROM v_gl_by_account_period").fetchall())
        assert names["1510"] == "Accounts receivable" and names["1191"] == "Stripe clearing"
        assert one("SELECT count(*) FROM v_gl_by_account_period WHERE debit_minor IS NULL OR credit_minor IS NULL "
                   "OR balance_minor IS NULL") == (0,)
        # the trial balance: every clearing account holds exactly what has not reached the bank yet
        clearing = dict(conn.execute(
            "SELECT account, closing_balance_minor FROM v_trial_balance WHERE period = '2026-10' "
            "AND account IN ('1191', '1192', '1193')").fetchall())
        in_transit = dict(conn.execute("""
            SELECT CASE l.processor WHEN 'stripe' THEN '1191' WHEN 'paytrace' THEN '1192' ELSE '1193' END,
                   sum(l.net_minor)
            FROM core_settlement_lines l LEFT JOIN core_payouts p USING (processor, payout_id)
            WHERE l.line_type <> 'payout' AND NOT (coalesce(p.status IN ('paid', 'failed'), false)
                                                   AND coalesce(p.arrival_date, p.settlement_date) <= DATE '2026-10-31')
            GROUP BY 1""").fetchall())
        assert clearing == {account: in_transit.get(account, 0) for account in clearing}
        assert clearing["1191"] > 0
        assert one("SELECT count(*), count(*) FILTER (closing_balance_minor IS NULL) FROM v_trial_balance")[1] == 0
        assert conn.execute("SELECT period, currency FROM v_trial_balance GROUP BY ALL "
                            "HAVING sum(closing_balance_minor) <> 0").fetchall() == []
        # payouts and fees
        assert one("SELECT count(*), sum(payout_amount_minor) FROM v_payout_status") == one(
            "SELECT count(*), sum(payout_amount_minor) FROM core_payout_reconciliation")
        assert conn.execute("SELECT currency, sum(charged_minor) FROM v_processor_fees_by_month GROUP BY 1").fetchall() \
            == conn.execute("SELECT currency, sum(amount_minor) FROM core_settlement_lines WHERE line_type = 'charge' "
                            "GROUP BY 1").fetchall()
