"""Journal derivation and corrections as plain functions over DuckDB tables (no Dagster, no sandbox):
which account every kind of line reaches, that vouchers balance and clearing nets to zero per payout,
what is held, and what a later run may and may not send to M3 after a voucher was posted."""

from dataclasses import replace

import duckdb
import pytest

from m3_recon.journals import AccountMap, clearing_by_payout, corrections, derive_journals

ACCOUNTS = AccountMap.load()
DAY, PAID_OUT, ARRIVED = "2026-10-01", "2026-10-03", "2026-10-05"
# payment ch_1 pays invoice 26000001 in full; ch_2 has no invoice; ch_3 pays 26000002 and 1 cent more (rounding)
LINES = [  # processor, payout_id, source_id, settlement_date, currency, line_type, amount_minor, fee_minor
    ("stripe", "po_1", "ch_1", DAY, "USD", "charge", 10_000, 320),
    ("stripe", "po_1", "ch_2", DAY, "USD", "charge", 5_000, 175),
    ("stripe", "po_1", "ch_3", DAY, "USD", "charge", 3_001, 117),
    ("stripe", "po_1", "re_1", DAY, "USD", "refund", -2_000, 0),
    ("stripe", "po_1", "po_1", PAID_OUT, "USD", "payout", -15_389, 0),
]
PAYOUT = ("stripe", "po_1", "USD", PAID_OUT, ARRIVED, 15_389, "paid")
ALLOCATIONS = [  # source_id, invoice_number, customer, allocated_minor
    ("ch_1", "26000001", "C1", 10_000),
    ("ch_3", "26000002", "C2", 3_000),
]


def load(conn, lines=LINES, payout=PAYOUT, allocations=ALLOCATIONS, payout_status=None):
    conn.execute("CREATE OR REPLACE TABLE lines (processor VARCHAR, payout_id VARCHAR, source_id VARCHAR, "
                 "settlement_date DATE, currency VARCHAR, line_type VARCHAR, amount_minor BIGINT, fee_minor BIGINT)")
    conn.executemany("INSERT INTO lines VALUES (?, ?, ?, ?, ?, ?, ?, ?)", lines)
    conn.execute("CREATE OR REPLACE TABLE payouts (processor VARCHAR, payout_id VARCHAR, currency VARCHAR, "
                 "settlement_date DATE, arrival_date DATE, amount_minor BIGINT, status VARCHAR)")
    conn.execute("INSERT INTO payouts VALUES (?, ?, ?, ?, ?, ?, ?)",
                 payout[:-1] + (payout_status or payout[-1],))
    conn.execute("CREATE OR REPLACE TABLE allocations (processor VARCHAR, source_id VARCHAR, invoice_number VARCHAR, "
                 "invoice_year INTEGER, customer VARCHAR, invoice_currency VARCHAR, allocated_minor BIGINT, "
                 "allocated_settlement_minor BIGINT, settlement_date DATE, allocated_local_minor BIGINT, "
                 "status VARCHAR, line_type VARCHAR)")
    conn.executemany("INSERT INTO allocations VALUES ('stripe', ?, ?, 2026, ?, 'USD', ?, ?, ?, ?, 'auto', 'charge')",
                     [(s, i, c, a, a, DAY, a) for s, i, c, a in allocations])
    conn.execute("CREATE OR REPLACE TABLE overpaid (processor VARCHAR, source_id VARCHAR, written_off BOOLEAN)")


def derive(conn, accounts=ACCOUNTS):
    derive_journals(conn, accounts, lines="lines", payouts="payouts", allocations="allocations", overpaid="overpaid")


def balances(conn, table="journal_lines"):
    return dict(conn.execute(f"SELECT ait1, sum(amount_minor) FROM {table} GROUP BY 1").fetchall())


@pytest.fixture
def conn():
    with duckdb.connect() as connection:
        load(connection)
        yield connection


def test_every_kind_of_line_reaches_its_account_and_clearing_nets_to_zero(conn):
    derive(conn)
    assert conn.execute("SELECT count(*) FROM (SELECT voucher_key FROM journal_lines GROUP BY voucher_key, currency "
                        "HAVING sum(amount_minor) <> 0)").fetchone()[0] == 0
    assert balances(conn) == {
        "1191": -320 - 175 - 117 + 5_000 + 1 - 2_000 - 15_389,  # clearing: GL part (cash application carries 13,000)
        "6810": 320 + 175 + 117,                                   # processing fees
        "2410": -5_000,                                            # ch_2 unapplied
        "8290": -1,                                                # ch_3's cent over, within the rounding tolerance
        "3090": 2_000,                                             # refund
        "1010": 15_389,                                            # bank, on arrival
    }
    assert conn.execute("SELECT voucher_key, invoice_number, amount_minor, local_minor FROM cash_applications "
                        "ORDER BY 2").fetchall() == [("CSA20261001", "26000001", 10_000, 10_000),
                                                     ("CSA20261001", "26000002", 3_000, 3_000)]
    bank = conn.execute("SELECT DISTINCT voucher_key, accounting_date::VARCHAR FROM journal_lines "
                        "WHERE entry = 'payout'").fetchall()
    assert len(bank) == 1 and bank[0][0].startswith("GSP261005") and len(bank[0][0]) <= 15 and bank[0][1] == ARRIVED
    assert conn.execute("SELECT max(length(voucher_text)) FROM journal_lines").fetchone()[0] <= 40
    clearing_by_payout(conn)
    assert conn.execute("SELECT clearing_net_minor FROM clearing_by_payout").fetchall() == [(0,)]


def test_a_payout_in_transit_leaves_its_amount_on_clearing(conn):
    load(conn, payout_status="in_transit")
    derive(conn)
    assert "1010" not in balances(conn)
    clearing_by_payout(conn)
    assert conn.execute("SELECT clearing_net_minor FROM clearing_by_payout").fetchall() == [(15_389,)]


def test_a_kind_without_an_account_holds_its_voucher_and_names_the_gap(conn):
    load(conn, lines=LINES + [("stripe", "po_1", "ot_1", DAY, "USD", "other", 50, 0)])
    derive(conn)
    held = conn.execute("SELECT DISTINCT voucher_key, held_reason FROM journal_lines "
                        "WHERE held_reason IS NOT NULL").fetchall()
    assert held == [("GSD20261001", "no GL account mapped for other in data/gl_accounts.toml")]
    assert conn.execute("SELECT count(*) FROM journal_lines WHERE held_reason IS NULL AND entry <> 'payout'"
                        ).fetchone()[0] == 0


def test_an_unknown_category_goes_to_suspense_so_its_payout_nets_to_zero_and_without_suspense_is_held(conn):
    lines = LINES[:-1] + [("stripe", "po_1", "txn_new", DAY, "USD", "unknown_category", 2_345, 0),
                          ("stripe", "po_1", "po_1", PAID_OUT, "USD", "payout", -17_734, 0)]
    load(conn, lines=lines, payout=PAYOUT[:5] + (15_389 + 2_345, "paid"))
    derive(conn)
    assert conn.execute("SELECT ait1, amount_minor, voucher_text, held_reason FROM journal_lines "
                        "WHERE entry = 'unknown_category' ORDER BY ait1").fetchall() == [
        ("1191", 2_345, "GSD20261001 unknown_category txn_new", None),
        ("2990", -2_345, "GSD20261001 unknown_category txn_new", None)]
    assert balances(conn)["1010"] == 17_734
    clearing_by_payout(conn)
    assert conn.execute("SELECT clearing_net_minor FROM clearing_by_payout").fetchall() == [(0,)]
    without_suspense = replace(ACCOUNTS, accounts={k: v for k, v in ACCOUNTS.accounts.items() if k != "suspense"})
    derive(conn, without_suspense)
    assert conn.execute("SELECT DISTINCT voucher_key, held_reason FROM journal_lines WHERE held_reason IS NOT NULL"
                        ).fetchall() == [("GSD20261001", "no GL account mapped for suspense in data/gl_accounts.toml")]
    assert conn.execute("SELECT sum(amount_minor) FROM journal_lines WHERE ait1 = '?suspense'").fetchone()[0] == -2_345


def test_a_residue_over_the_rounding_tolerance_is_unapplied_cash_not_rounding(conn):
    load(conn, allocations=[("ch_1", "26000001", "C1", 10_000), ("ch_3", "26000002", "C2", 2_990)])
    derive(conn)
    assert "8290" not in balances(conn)
    assert balances(conn)["2410"] == -5_000 - 11


def post_everything(conn):
    """Store the derived journals as the warehouse would and mark every voucher sent to M3."""
    conn.execute("CREATE OR REPLACE TABLE core_gl_journal_lines AS SELECT * FROM journal_lines")
    conn.execute("CREATE OR REPLACE TABLE core_cash_applications AS SELECT * FROM cash_applications")
    conn.execute("CREATE OR REPLACE TABLE out_m3_postings AS SELECT DISTINCT voucher_key, route, "
                 "TIMESTAMP '2026-10-02 02:00' AS sent_at_utc FROM (SELECT voucher_key, 'gl' AS route FROM journal_lines "
                 "UNION ALL SELECT voucher_key, 'cash_application' FROM cash_applications)")


def test_a_payout_learned_after_posting_is_no_revision_and_the_kept_lines_name_it(conn):
    unpaid = [(p, None if t != "payout" else po, s, d, c, t, a, f) for p, po, s, d, c, t, a, f in LINES]
    load(conn, lines=[line for line in unpaid if line[5] != "payout"], payout_status="pending")
    derive(conn)
    post_everything(conn)
    load(conn)  # two days later Stripe pays the day out
    derive(conn)
    assert corrections(conn) == 0
    assert conn.execute("SELECT count(*) FROM journal_lines WHERE entry <> 'payout' AND payout_id IS NULL"
                        ).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM cash_applications WHERE payout_id = 'po_1'").fetchone()[0] == 2
    clearing_by_payout(conn)
    assert conn.execute("SELECT clearing_net_minor FROM clearing_by_payout").fetchall() == [(0,)]


def test_a_decision_after_posting_reaches_m3_as_the_difference_only(conn):
    derive(conn)
    post_everything(conn)
    load(conn, allocations=ALLOCATIONS + [("ch_2", "26000003", "C3", 5_000)])  # finance assigned ch_2
    derive(conn)
    assert corrections(conn) == 2
    assert conn.execute("SELECT voucher_key, invoice_number, amount_minor FROM cash_applications "
                        "WHERE voucher_key LIKE '%R1'").fetchall() == [("CSA20261001R1", "26000003", 5_000)]
    revision = conn.execute("SELECT ait1, amount_minor FROM journal_lines WHERE voucher_key = 'GSD20261001R1' "
                            "ORDER BY 1").fetchall()
    assert revision == [("1191", -5_000), ("2410", 5_000)]  # unapplied cash taken back off clearing
    kept = "SELECT voucher_key, line_number, ait1, amount_minor, source_id FROM {} WHERE voucher_key = 'GSD20261001'"
    assert sorted(conn.execute(kept.format("journal_lines")).fetchall()) == sorted(
        conn.execute(kept.format("core_gl_journal_lines")).fetchall())  # what M3 holds is kept as sent
    post_everything(conn)
    load(conn, allocations=ALLOCATIONS + [("ch_2", "26000003", "C3", 5_000)])
    derive(conn)
    assert corrections(conn) == 0  # the decision is sent once


def test_taking_back_a_posted_cash_application_is_a_conflict_for_a_person(conn):
    derive(conn)
    post_everything(conn)
    load(conn, allocations=ALLOCATIONS[1:])  # ch_1 no longer applied to 26000001
    derive(conn)
    corrections(conn)
    assert conn.execute("SELECT count(*) FROM cash_applications WHERE amount_minor < 0").fetchone()[0] == 0
    conflict = conn.execute("SELECT source_id, amount_minor, detail FROM journal_conflicts").fetchall()
    assert conflict == [("ch_1", -10_000, "a posted cash application of 26000001 would have to be reduced by "
                                          "10000 USD: reverse it in M3 by hand")]


def test_a_processor_day_too_large_for_one_voucher_is_cut_into_balanced_parts_that_stay_put():
    charges = [("stripe", "po_1", f"ch_{i}", DAY, "USD", "charge", 1_000 + i, 59) for i in range(3_000)]
    with duckdb.connect() as conn:  # 6,000 entries (each charge unapplied, and its fee): three parts
        load(conn, lines=charges, allocations=[("ch_0", "26000001", "C1", 1_000)])
        derive(conn)
        parts = conn.execute("""
            SELECT voucher_key, count(*), sum(amount_minor), count(DISTINCT source_id) FROM journal_lines
            WHERE entry <> 'payout' GROUP BY 1 ORDER BY 1""").fetchall()
        assert [key for key, *_ in parts] == ["GSD20261001", "GSD20261001N2", "GSD20261001N3"]
        assert all(total == 0 and lines <= 10_000 for _, lines, total, _ in parts)  # each balances, M3 can list it
        assert sum(sources for *_, sources in parts) == 3_000  # every charge whole in one part
        assert conn.execute("SELECT max(line_number) = count(*) FROM journal_lines WHERE voucher_key = 'GSD20261001'"
                            ).fetchone()[0]
        derive(conn)  # the day closed again: every line in the same part
        assert conn.execute("SELECT voucher_key, count(*), sum(amount_minor), count(DISTINCT source_id) "
                            "FROM journal_lines WHERE entry <> 'payout' GROUP BY 1 ORDER BY 1").fetchall() == parts
