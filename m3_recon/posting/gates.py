"""Blocking checks gate posting per processor and day: ``core_posting_blocks``.

A voucher is only as good as the figures behind it. When a blocking check fails, every voucher of the
processor-days it concerns is ``held`` with the check's name (``outbox.enqueue`` reads this table) and
never sent; the next close that finds the check passing drops the block, and the voucher posts by
itself. Other processors and days post normally. The checks, as DuckDB SQL over the window
[first, end):

* ``payout_ties_out`` — a payout's lines sum to its amount (the tie-out identity); a mismatch blocks
  the payout's day and the days of its lines;
* ``vouchers_balance`` — every voucher sums to zero per currency;
* ``allocations_sum_to_payment`` — an applied payment's allocations plus its unapplied excess equal it;
* ``no_invoice_over_allocated`` — no invoice receives more than M3 shows outstanding (counting what is
  not yet in M3); blocks the days of the payments allocated to it;
* ``clearing_nets_to_zero_per_payout`` — a tied payout that arrived (or failed) leaves nothing on clearing.

``UNBALANCED_PAYMENTS`` and ``over_allocated_invoices`` are shared with the asset checks of
``core_payment_allocations``; the latter counts out what M3 already holds applied (``applications``, from
``m3_recon.reconcile.posted.applications_in_m3``).
"""

from __future__ import annotations

from datetime import date

import duckdb

from m3_recon.money import money_sql

BLOCKS = "core_posting_blocks"
BLOCK_COLUMNS = {"processor": "VARCHAR NOT NULL", "day": "DATE NOT NULL", "check_name": "VARCHAR NOT NULL",
                 "detail": "VARCHAR NOT NULL"}

UNBALANCED_PAYMENTS = """
    SELECT a.processor, a.source_id, a.payment_invoice_amount_minor, sum(a.allocated_minor) AS allocated,
           coalesce(any_value(e.unapplied), 0) AS unapplied, any_value(a.invoice_currency) AS currency,
           any_value(a.settlement_date) AS settlement_date
    FROM core_payment_allocations a
    LEFT JOIN (SELECT processor, source_id, sum(unapplied_minor) AS unapplied FROM core_match_exceptions
               WHERE reason_code = 'overpayment' GROUP BY ALL) e USING (processor, source_id)
    WHERE a.status = 'auto' AND a.line_type = 'charge'
    GROUP BY a.processor, a.source_id, a.payment_invoice_amount_minor
    HAVING sum(a.allocated_minor) + coalesce(any_value(e.unapplied), 0) <> a.payment_invoice_amount_minor"""


def over_allocated_invoices(applications: str) -> str:
    """SQL: invoices allocated more than M3 shows outstanding, not counting ``applications`` M3 already holds."""
    return f"""
    SELECT a.invoice_number, a.invoice_year, sum(a.allocated_minor) AS allocated, any_value(i.outstanding_minor)
    FROM core_payment_allocations a
    LEFT JOIN core_open_invoices i USING (invoice_number, invoice_year)
    WHERE a.status = 'auto' AND a.invoice_number IS NOT NULL
      AND (a.processor, a.source_id, a.invoice_number, a.invoice_year) NOT IN
          (SELECT (processor, source_id, invoice_number, invoice_year) FROM {applications})
    GROUP BY a.invoice_number, a.invoice_year
    HAVING sum(a.allocated_minor) > coalesce(any_value(i.outstanding_minor), 0)"""


def posting_blocks(conn: duckdb.DuckDBPyConnection, first_day: date, end_day: date, *, journal_lines: str,
                   clearing_residue: str, applications: str, local_currency: str = "USD") -> None:
    """Temp table ``posting_blocks`` (BLOCK_COLUMNS): each failing check per processor-day of [first_day, end_day).

    ``journal_lines``: the window's derived GL lines, which must balance per currency and in M3's
    ``local_currency`` (``local_minor``); ``clearing_residue``: tied payouts whose clearing does not
    net to zero (processor, payout_id, payout_status, clearing_net_minor); ``applications``: allocations M3 already
    holds applied."""
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE posting_blocks AS
        WITH mismatched AS (
            SELECT processor, payout_id, settlement_date, residue FROM core_payout_reconciliation
            WHERE status = 'mismatch'
        ), found AS (
            SELECT processor, settlement_date AS day, 'payout_ties_out' AS check_name,
                   'payout ' || payout_id || ': ' || coalesce(residue, 'lines do not sum to the payout') AS detail
            FROM mismatched
            UNION ALL
            SELECT DISTINCT l.processor, l.settlement_date, 'payout_ties_out',
                   'a line of payout ' || m.payout_id || ': ' || coalesce(m.residue, 'lines do not sum to the payout')
            FROM core_settlement_lines l JOIN mismatched m USING (processor, payout_id)
            UNION ALL
            SELECT DISTINCT j.processor, coalesce(j.source_date, j.accounting_date), 'vouchers_balance',
                   'voucher ' || u.voucher_key || ' does not balance' || u.side || ': off by '
                   || {money_sql('u.off', 'u.currency')}
            FROM {journal_lines} j JOIN (SELECT voucher_key, currency, '' AS side, sum(amount_minor) AS off
                                         FROM {journal_lines} GROUP BY ALL HAVING sum(amount_minor) <> 0
                                         UNION ALL
                                         SELECT voucher_key, '{local_currency}', ' in local currency',
                                                sum(local_minor) FROM {journal_lines}
                                         GROUP BY ALL HAVING sum(local_minor) <> 0) u USING (voucher_key)
            UNION ALL
            SELECT processor, settlement_date, 'allocations_sum_to_payment',
                   'payment ' || source_id || ' allocates ' || {money_sql('allocated', 'currency')}
                   || ' + unapplied ' || {money_sql('unapplied', 'currency')}
                   || ' of ' || {money_sql('payment_invoice_amount_minor', 'currency')}
            FROM ({UNBALANCED_PAYMENTS})
            UNION ALL
            SELECT DISTINCT a.processor, a.settlement_date, 'no_invoice_over_allocated',
                   'invoice ' || o.invoice_number || '/' || o.invoice_year || ' is allocated more than it has open'
            FROM core_payment_allocations a JOIN ({over_allocated_invoices(applications)}) o USING (invoice_number, invoice_year)
            WHERE a.status = 'auto'
            UNION ALL
            SELECT r.processor, t.settlement_date, 'clearing_nets_to_zero_per_payout',
                   'payout ' || r.payout_id || ' leaves ' || r.clearing_net_minor || ' on clearing'
            FROM {clearing_residue} r JOIN core_payout_reconciliation t USING (processor, payout_id)
            WHERE r.payout_status IN ('paid', 'failed')
        )
        SELECT processor, day, check_name, min(detail) AS detail FROM found
        WHERE day >= $first AND day < $end GROUP BY ALL""", {"first": first_day, "end": end_day})


def held_reasons_sql(lines: str, day: str) -> str:
    """SQL: per voucher key of ``lines``, why blocking checks hold it (NULL-free rows only where blocked).
    ``day`` is the lines' column naming their processor-day."""
    return f"""
        SELECT l.voucher_key, string_agg(DISTINCT 'blocking check ' || b.check_name || ' failed: ' || b.processor
                                         || ' ' || b.day || ': ' || b.detail, '; ') AS block_reason
        FROM {lines} l JOIN {BLOCKS} b ON b.processor = l.processor AND b.day = {day}
        GROUP BY l.voucher_key"""
