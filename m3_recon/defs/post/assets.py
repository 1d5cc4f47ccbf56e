"""``core_gl_journal_lines`` and ``core_cash_applications``: the window's journals, derived and stored by
``m3_recon.journals.window.run_window`` and checked before anything can be posted (every voucher balances per
currency; for every tied payout the clearing account nets to zero). The processor-days where a
blocking check fails (these, the payout tie-out and the allocation checks) go to
``core_posting_blocks``, which holds their vouchers back (``m3_recon.posting.gates``).
``out_m3_postings`` posts; its run fails when M3 refused a voucher."""
# No `from __future__ import annotations` here: Dagster reads the config annotation at runtime.
import warnings

import dagster as dg
from dagster_duckdb import DuckDBResource

from m3_recon.defs.m3.resources import M3Resource
from m3_recon import settings
from m3_recon.defs.metadata import markdown_table, money_totals
from m3_recon.journals import AccountMap, load_exchange_rates
from m3_recon.journals.window import Journals, run_window
from m3_recon.money import money
from m3_recon.partitions import LookbackConfig, daily_partitions, fetch_window
from m3_recon.posting.config import posting_config_from_env
from m3_recon.posting.poster import post_pending
from m3_recon.reconcile.decisions import load_decisions

warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is beta in 1.13

GROUP = "post"
OWNERS = ["team:finance-systems"]


def journal_checks(conn, journals: Journals, local: str) -> list[dg.AssetCheckResult]:
    """Vouchers balance, per currency and in M3's local currency ``local``; and every tied payout of the window
    that has reached the bank (or failed) and whose lines all lie in the window nets to zero on clearing (in local
    currency). A payout still in transit is not yet booked to the bank, so its amount is still on clearing: that
    residue is named in the check's metadata instead."""
    unbalanced = conn.execute(f"""SELECT voucher_key, currency, sum(amount_minor) FROM {journals.lines}
                                  GROUP BY ALL HAVING sum(amount_minor) <> 0
                                  UNION ALL
                                  SELECT voucher_key, 'local ' || ?, sum(local_minor) FROM {journals.lines}
                                  GROUP BY ALL HAVING sum(local_minor) <> 0""", [local]).fetchall()
    residue = conn.execute(f"SELECT processor, payout_id, clearing_net_minor FROM {journals.clearing_residue} "
                           "WHERE payout_status IN ('paid', 'failed')").fetchall()
    in_transit = conn.execute(
        f"SELECT ?, count(*), sum(r.clearing_net_minor) FROM {journals.clearing_residue} r "
        "WHERE r.payout_status IN ('pending', 'in_transit') GROUP BY 1", [local]).fetchall()
    return [
        dg.AssetCheckResult(check_name="vouchers_balance", asset_key="core_gl_journal_lines", passed=not unbalanced,
                            severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"unbalanced_vouchers": len(unbalanced),
                                      "examples": dg.MetadataValue.json([list(map(str, r)) for r in unbalanced[:5]])}),
        dg.AssetCheckResult(check_name="clearing_nets_to_zero_per_payout", asset_key="core_gl_journal_lines",
                            passed=not residue, severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"tied_payouts_with_clearing_residue": len(residue),
                                      "payouts_in_transit": sum(n for _, n, _ in in_transit),
                                      **money_totals("in_transit_on_clearing", [(c, a) for c, _, a in in_transit]),
                                      "examples": dg.MetadataValue.json([list(map(str, r)) for r in residue[:5]])}),
    ]


@dg.multi_asset(
    specs=[
        dg.AssetSpec("core_gl_journal_lines", group_name=GROUP, owners=OWNERS, kinds={"duckdb"},
                     deps=["core_settlement_lines", "core_payouts", "core_payment_allocations", "core_open_invoices",
                           "core_payout_reconciliation"],
                     description="Balanced GL voucher lines for M3 (GLS840MI): voucher key (M3 KEY1), accounting "
                                 "date, AIT1..AIT7, currency, signed amount (+ debit, − credit), voucher text, and "
                                 "the processor / payout / source line each comes from. Held vouchers name why."),
        dg.AssetSpec("core_cash_applications", group_name=GROUP, owners=OWNERS, kinds={"duckdb"},
                     deps=["core_payment_allocations", "core_open_invoices"],
                     description="Payments applied to M3 invoices (ARS040MI payment batches: CINO, INYR, CUNO, PYAM), "
                                 "one batch per processor and payment day; only `auto` allocations."),
    ],
    check_specs=[
        dg.AssetCheckSpec("vouchers_balance", asset="core_gl_journal_lines", blocking=True,
                          description="Every voucher sums to zero per currency."),
        dg.AssetCheckSpec("clearing_nets_to_zero_per_payout", asset="core_gl_journal_lines", blocking=True,
                          description="For every tied payout, clearing movements (GL + cash application) net to zero."),
    ],
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), pool="duckdb_writer",
)
def journals(context: dg.AssetExecutionContext, config: LookbackConfig, duckdb: DuckDBResource):
    window = fetch_window(context.partition_time_window, config.lookback_days)
    with duckdb.get_connection() as conn:
        load_decisions(conn, into="exception_decisions")
        local = settings.local_currency()
        load_exchange_rates(conn, settings.exchange_rates_file(), local)
        derived = run_window(conn, AccountMap.load(), window.start.date(), window.end.date(),
                             decisions="exception_decisions", local_currency=local, rates="exchange_rates")
        revisions = derived.corrections
        vouchers, lines, held = conn.execute(f"""
            SELECT count(DISTINCT voucher_key), count(*), count(DISTINCT voucher_key) FILTER (held_reason IS NOT NULL)
            FROM {derived.lines}""").fetchone()
        debits = conn.execute(f"SELECT currency, sum(amount_minor) FROM {derived.lines} WHERE amount_minor > 0 "
                              "GROUP BY 1").fetchall()
        by_entry = conn.execute("SELECT entry, currency, count(*), "
                                "coalesce(sum(amount_minor) FILTER (amount_minor > 0), 0) "
                                f"FROM {derived.lines} GROUP BY ALL ORDER BY ALL").fetchall()
        batches, applications = conn.execute(
            f"SELECT count(DISTINCT voucher_key), count(*) FROM {derived.cash_applications}").fetchone()
        applied = conn.execute(f"SELECT currency, sum(amount_minor) FROM {derived.cash_applications} "
                               "GROUP BY 1").fetchall()
        checks = journal_checks(conn, derived, local)
        blocked = conn.execute(f"SELECT check_name || ': ' || processor || ' ' || day FROM {derived.blocks} "
                               "ORDER BY ALL").fetchall()
    yield dg.MaterializeResult(asset_key="core_gl_journal_lines", metadata={
        "fetch_window": str(window), "vouchers": vouchers, "lines": lines, "held_vouchers": held,
        "correction_vouchers": revisions,
        "blocked_processor_days": dg.MetadataValue.json([b for (b,) in blocked]),
        **money_totals("debits", debits),
        "by_entry": markdown_table(["entry", "lines", "debits"], [(e, n, money(d, c)) for e, c, n, d in by_entry])})
    yield dg.MaterializeResult(asset_key="core_cash_applications", metadata={
        "fetch_window": str(window), "payment_batches": batches, "applications": applications,
        **money_totals("applied", applied)})
    yield from checks


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"m3", "duckdb"}, pool="duckdb_writer",
    deps=["core_gl_journal_lines", "core_cash_applications"],
    description="The M3 postings outbox: every voucher and cash batch with its status (pending, sent, verified, "
                "failed, held), attempts, last error and M3 voucher number. Posting sends GL vouchers through "
                "GLS840MI and verifies them with GLS200MI, applies cash through ARS040MI and confirms it with "
                "ARS200MI — exactly once, resuming whatever M3 already holds after a crash.",
)
def out_m3_postings(context: dg.AssetExecutionContext, duckdb: DuckDBResource, m3: M3Resource) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        summary = post_pending(conn, m3.client(), posting_config_from_env())
        by_status = conn.execute("SELECT route, status, count(*) FROM out_m3_postings GROUP BY ALL ORDER BY ALL").fetchall()
    failed = [o for o in summary.outcomes if o.status == "failed"]
    for outcome in failed[:20]:
        context.log.error(f"{outcome.route} voucher {outcome.voucher_key} failed: {outcome.error}")
    for outcome in [o for o in summary.outcomes if o.status == "posted_unverified"][:20]:
        context.log.warning(f"{outcome.route} voucher {outcome.voucher_key} posted but not verified: {outcome.error}")
    metadata = {
        **summary.counts(),
        "outbox": markdown_table(["route", "status", "vouchers"], by_status, text_columns=2)}
    if failed:
        raise dg.Failure(description=f"{len(failed)} voucher(s) failed in M3 this run (e.g. {failed[0].voucher_key}: "
                                     f"{failed[0].error}); see out_m3_postings.last_error", metadata=metadata)
    return dg.MaterializeResult(metadata=metadata)
