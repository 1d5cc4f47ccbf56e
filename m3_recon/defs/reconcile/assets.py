"""``core_payment_allocations``, ``core_payout_reconciliation`` and ``out_recon_exceptions``.

Thin wrappers: each asset runs its plain function of ``m3_recon.reconcile.window`` over the partition's
fetch window (which replaces the window in DuckDB) and reports what a controller looks at (auto-match share, unmatched
amount, payouts tied / mismatched, open exceptions). Blocking checks protect the ledger: allocations
sum to their payment, no invoice is allocated beyond its outstanding amount, and every mismatched
payout has an open exception.
"""
# No `from __future__ import annotations` here: Dagster reads the config annotation at runtime.
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from m3_recon import settings
from m3_recon.alerts import deliver_alerts, raise_alerts
from m3_recon.analyst import VIEWS as ANALYST_VIEWS
from m3_recon.analyst import publish
from m3_recon.defs.metadata import markdown_table, money_totals
from m3_recon.partitions import LookbackConfig, FetchWindow, daily_partitions, fetch_window
from m3_recon.money import money, money_by_currency
from m3_recon.posting.gates import UNBALANCED_PAYMENTS, over_allocated_invoices
from m3_recon.report import build_report
from m3_recon.reconcile.decisions import load_decisions
from m3_recon.reconcile.matching import MatchingRules
from m3_recon.reconcile.window import allocate_payments, register_window_exceptions, tie_out_payouts_and_bank
from m3_recon.journals import AccountMap
from m3_recon.warehouse import naive_utc

warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is beta in 1.13

GROUP = "reconcile"
OWNERS = ["team:finance-systems"]


def _window(context, config) -> FetchWindow:
    return fetch_window(context.partition_time_window, config.lookback_days)


def allocation_checks(conn, applications: str) -> list[dg.AssetCheckResult]:
    unbalanced = conn.execute(f"SELECT * EXCLUDE (settlement_date) FROM ({UNBALANCED_PAYMENTS}) LIMIT 20").fetchall()
    over = conn.execute(f"{over_allocated_invoices(applications)} LIMIT 20").fetchall()
    return [
        dg.AssetCheckResult(check_name="allocations_sum_to_payment", passed=not unbalanced,
                            severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"payments_out_of_balance": len(unbalanced),
                                      "examples": dg.MetadataValue.json([list(map(str, r)) for r in unbalanced[:5]])}),
        dg.AssetCheckResult(check_name="no_invoice_over_allocated", passed=not over, severity=dg.AssetCheckSeverity.ERROR,
                            metadata={"invoices_over_allocated": len(over),
                                      "examples": dg.MetadataValue.json([list(map(str, r)) for r in over[:5]])}),
    ]


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP, owners=OWNERS,
    kinds={"duckdb"}, pool="duckdb_writer", deps=["core_settlement_lines", "core_open_invoices", "core_customer_xref"],
    check_specs=[
        dg.AssetCheckSpec("allocations_sum_to_payment", asset="core_payment_allocations", blocking=True,
                          description="Every applied payment's allocations plus its unapplied excess equal the payment."),
        dg.AssetCheckSpec("no_invoice_over_allocated", asset="core_payment_allocations", blocking=True,
                          description="No invoice receives more than M3 shows outstanding (counting what is not "
                                      "yet in M3)."),
    ],
    description="Payment line → invoice allocations: allocated amount (invoice and settlement currency), rule, "
                "confidence and status auto / suggested / unmatched. Only `auto` rows are ever posted.",
)
def core_payment_allocations(context: dg.AssetExecutionContext, config: LookbackConfig,
                             duckdb: DuckDBResource) -> dg.MaterializeResult:
    window = _window(context, config)
    with duckdb.get_connection() as conn:
        load_decisions(conn, into="exception_decisions")
        allocated = allocate_payments(conn, MatchingRules.load(), window.start.date(), window.end.date(),
                                      decisions="exception_decisions", local_currency=settings.local_currency())
        payments, auto, suggested, unmatched = conn.execute(f"""
            SELECT count(DISTINCT source_id), count(DISTINCT source_id) FILTER (status = 'auto'),
                   count(DISTINCT source_id) FILTER (status = 'suggested'),
                   count(DISTINCT source_id) FILTER (status = 'unmatched')
            FROM {allocated.allocations} WHERE line_type = 'charge'""").fetchone()
        unmatched_amount = conn.execute(f"""
            SELECT payment_currency, sum(amount) FROM (
                SELECT DISTINCT processor, source_id, payment_currency, payment_amount_minor AS amount
                FROM {allocated.allocations} WHERE line_type = 'charge' AND status = 'unmatched') GROUP BY 1""").fetchall()
        by_reason = conn.execute(f"SELECT reason_code, count(*) FROM {allocated.exceptions} "
                                 "GROUP BY 1 ORDER BY 2 DESC").fetchall()
        checks = allocation_checks(conn, allocated.applications)
    return dg.MaterializeResult(metadata={
        "fetch_window": str(window), "payments": payments, "auto_matched": auto, "suggested": suggested,
        "applied_by_decision": allocated.decided, "kept_as_posted": allocated.kept_as_posted,
        "customers_from_xref": allocated.customers_from_xref,
        "unmatched": unmatched, "auto_match_share": round(auto / payments, 4) if payments else 0.0,
        **money_totals("unmatched_amount", unmatched_amount),
        "exceptions_by_reason": markdown_table(["reason", "payments"], by_reason),
    }, check_results=checks)


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP, owners=OWNERS,
    kinds={"duckdb"}, pool="duckdb_writer", deps=["core_payouts", "core_settlement_lines", "raw_bank_statement_lines"],
    description="Per payout / deposit / batch: the sum of its lines against the amount paid out, the difference, "
                "and a status tied / mismatch / pending / failed, with any residue named; and whether the bank "
                "received it (banked, banked_on, bank_line_ref: account/statement/line of the bank statement).",
)
def core_payout_reconciliation(context: dg.AssetExecutionContext, config: LookbackConfig,
                               duckdb: DuckDBResource) -> dg.MaterializeResult:
    window = _window(context, config)
    with duckdb.get_connection() as conn:
        tieout = tie_out_payouts_and_bank(conn, window.start.date(), window.end.date(),
                                          descriptors=settings.bank_descriptors(),
                                          business_days=settings.bank_business_days())
        by_status = dict(conn.execute(f"SELECT status, count(*) FROM {tieout} GROUP BY 1").fetchall())
        banked = conn.execute("SELECT count(*) FILTER (banked), count(*) FILTER (NOT banked AND status NOT IN "
                              f"('failed', 'pending')) FROM {tieout}").fetchone()
        residue = conn.execute(f"SELECT currency, sum(abs(difference_minor)) FROM {tieout} "
                               "WHERE status = 'mismatch' GROUP BY 1").fetchall()
    return dg.MaterializeResult(metadata={
        "fetch_window": str(window), "payouts": sum(by_status.values()), "tied": by_status.get("tied", 0),
        "mismatched": by_status.get("mismatch", 0), "pending": by_status.get("pending", 0),
        "failed": by_status.get("failed", 0), **money_totals("mismatch_residue", residue),
        "banked": banked[0], "not_yet_banked": banked[1]})


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP, owners=OWNERS,
    kinds={"duckdb"}, pool="duckdb_writer",
    deps=[core_payment_allocations, core_payout_reconciliation, "core_gl_journal_lines"],
    check_specs=[dg.AssetCheckSpec("every_payout_tied_or_excepted", asset="out_recon_exceptions", blocking=True,
                                   description="Every mismatched payout has an open exception.")],
    description="The exception register: one row per thing a person must decide (stable id, reason code, amounts, "
                "candidates, first seen, status), including anomaly flags (fee-rate drift, unusual payouts, refund "
                "and dispute spikes). Exceptions that stop occurring are marked cleared, never deleted.",
)
def out_recon_exceptions(context: dg.AssetExecutionContext, config: LookbackConfig,
                         duckdb: DuckDBResource) -> dg.MaterializeResult:
    window = _window(context, config)
    with duckdb.get_connection() as conn:
        load_decisions(conn, into="exception_decisions")
        registered = register_window_exceptions(
            conn, window.start.date(), window.end.date(), now=naive_utc(datetime.now(timezone.utc)),
            decisions="exception_decisions", suspense_account=AccountMap.load().accounts.get("suspense"),
            descriptors=settings.bank_descriptors(), business_days=settings.bank_business_days())
        unexcepted = conn.execute(f"""
            SELECT t.payout_id FROM {registered.tieout} t WHERE t.status = 'mismatch' AND NOT EXISTS (
                SELECT 1 FROM out_recon_exceptions e WHERE e.reason_code = 'payout_mismatch' AND e.status = 'open'
                  AND e.processor = t.processor AND e.source_id = t.payout_id)""").fetchall()
        open_by_reason = [(r, int(n), money_by_currency([(x["c"], x["a"]) for x in amounts if x["c"]]))
                          for r, n, amounts in conn.execute(
            "SELECT reason_code, sum(n), list(struct_pack(c := currency, a := amount)) FROM (SELECT reason_code, "
            "currency, count(*) AS n, coalesce(sum(amount_minor), 0) AS amount FROM out_recon_exceptions "
            "WHERE status = 'open' GROUP BY ALL) GROUP BY 1 ORDER BY 2 DESC").fetchall()]
        top = conn.execute("SELECT exception_id, reason_code, processor, source_id, settlement_date, amount_minor, "
                           "currency FROM out_recon_exceptions WHERE status = 'open' "
                           "ORDER BY abs(amount_minor) DESC NULLS LAST LIMIT 10").fetchall()
    return dg.MaterializeResult(metadata={
        "fetch_window": str(window), "new": registered.new, "cleared": registered.cleared,
        "decided": registered.decided, "open": sum(n for _, n, _ in open_by_reason),
        "open_by_reason": markdown_table(["reason", "open", "amount"], open_by_reason),
        "top_open_exceptions": markdown_table(["id", "reason", "processor", "source", "day", "amount"],
                                              [(i, r, p, s, d, money(a, c)) for i, r, p, s, d, a, c in top],
                                              text_columns=5),
    }, check_results=[dg.AssetCheckResult(
        check_name="every_payout_tied_or_excepted", passed=not unexcepted, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"mismatched_without_exception": len(unexcepted)})])


class AlertWebhook(dg.ConfigurableResource):
    """Where alerts are sent (M3_RECON_ALERT_WEBHOOK_URL, a Slack incoming webhook or any JSON receiver)."""

    url: str | None = None
    timeout_seconds: float = 10.0


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"duckdb"}, pool="duckdb_writer", deps=[out_recon_exceptions],
    description="One alert per newly opened exception (mismatched payouts, unmatched and ambiguous payments, "
                "held vouchers), delivered to the configured webhook; undelivered alerts are retried.",
)
def out_alerts(context: dg.AssetExecutionContext, duckdb: DuckDBResource, alert_webhook: AlertWebhook) -> dg.MaterializeResult:
    now = naive_utc(datetime.now(timezone.utc))
    with duckdb.get_connection() as conn:
        raised = raise_alerts(conn, now)
        delivery = deliver_alerts(conn, alert_webhook.url, now, alert_webhook.timeout_seconds) if alert_webhook.url \
            else {"delivered": 0, "failed": 0}
        undelivered = conn.execute("SELECT count(*) FROM out_alerts WHERE delivered_at_utc IS NULL").fetchone()[0]
    if delivery["failed"]:
        context.log.warning(f"{delivery['failed']} alert(s) could not be delivered; they are retried on the next run")
    return dg.MaterializeResult(metadata={"raised": raised, **delivery, "undelivered": undelivered,
                                          "webhook_configured": bool(alert_webhook.url)})


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"duckdb"}, pool="duckdb_writer",
    deps=[out_recon_exceptions, "core_gl_journal_lines", "core_cash_applications", core_payout_reconciliation],
    description="The analysts' read-only copy of every table plus views for the common questions "
                "(v_unmatched_payments, v_payout_status, v_open_exceptions_by_age, v_gl_by_account_period, "
                "v_processor_fees_by_month), replaced atomically at the end of each close "
                "(M3_RECON_ANALYST_DUCKDB_PATH). Readers never block the close and never see a half-written day.",
)
def out_analyst_warehouse(duckdb: DuckDBResource) -> dg.MaterializeResult:
    target = settings.analyst_duckdb_path()
    with duckdb.get_connection() as conn:
        tables = publish(conn, target)
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(target), "tables": len(tables),
                                          "rows": dg.MetadataValue.json(tables), "views": len(ANALYST_VIEWS)})


@dg.asset(
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP, owners=OWNERS,
    kinds={"duckdb", "html", "csv", "excel"}, pool="duckdb_writer",
    deps=[out_recon_exceptions, "core_gl_journal_lines", "core_cash_applications", core_payout_reconciliation,
          core_payment_allocations, "out_m3_postings"],
    description="The payout reconciliation report a controller signs, written after posting: per processor and "
                "currency the clearing balance roll-forward (opening + charges − refunds − disputes − fees ± "
                "adjustments − payouts = closing, against the ledger), every payout and its lines with customer and "
                "invoice, open exceptions aged from the payment date, and the vouchers with their M3 status and "
                "number — as report.html, report.xlsx (one sheet per section) and CSV files under "
                "`data/reports/<first>_<last>/`.",
)
def out_reconciliation_report(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    window = context.partition_time_window
    first, last = window.start.date(), (window.end - timedelta(days=1)).date()
    directory = Path(settings.reports_path()) / f"{first}_{last}"
    with duckdb.get_connection() as conn:
        paths, sections = build_report(conn, first, last, directory, naive_utc(datetime.now(timezone.utc)),
                                       context.run.run_id)
    roll_forward, journals = sections[0], next(s for s in sections if s.key == "journals")
    rows = [dict(zip(roll_forward.columns, row)) for row in roll_forward.rows]
    column = {name: journals.columns.index(name) for name in ("route", "voucher_key", "m3_status")}
    vouchers = {(row[column["route"]], row[column["voucher_key"]]): row[column["m3_status"]]  # a row per currency
                for row in journals.rows}
    statuses: dict[str, int] = {}
    for status in vouchers.values():
        statuses[status] = statuses.get(status, 0) + 1
    return dg.MaterializeResult(metadata={
        "period": f"{first} to {last}",
        "roll_forward_closes": all(r["difference_minor"] == 0 for r in rows),
        "roll_forward": markdown_table(
            ["processor", "opening", "charges", "refunds", "disputes", "fees", "adjustments", "payouts", "closing",
             "ledger", "difference"],
            [[r["processor"], *(money(r[c], r["currency"]) for c in (
                "opening_minor", "charges_minor", "refunds_minor", "disputes_minor", "fees_minor", "adjustments_minor",
                "payouts_minor", "closing_minor", "ledger_closing_minor", "difference_minor"))] for r in rows]),
        "vouchers_by_m3_status": dg.MetadataValue.json(statuses),
        "report": dg.MetadataValue.path(str(paths["html"])),
        "report_url": dg.MetadataValue.url(paths["html"].resolve().as_uri()),
        "workbook": dg.MetadataValue.path(str(paths["xlsx"])),
        **{f"csv_{key}": dg.MetadataValue.path(str(path)) for key, path in paths.items() if key not in ("html", "xlsx")},
    })
