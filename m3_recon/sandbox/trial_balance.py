"""M3's trial balance in the sandbox, as the demo prints it: every GL account's debits and credits (local
currency) from both posting routes — GLS840MI vouchers (series GL) and the ARS040MI payment vouchers
(series PY) — and, per processor, whether its clearing account holds exactly the payouts still in transit.

A payout's lines move clearing as they settle and the payout moves it to the bank when it arrives, so
once everything is posted a processor's clearing balance in M3 is the net of what has not reached the
bank yet: its payouts in transit (pending or on their way) and the settled lines no payout has taken
yet (the balance the processor pays out next). Cash that M3 booked on another account than the processor's clearing account (a payment
method without its account, say) shows up here as a residue on clearing and a balance elsewhere. A processor
settling in another currency than M3's local one holds those lines at their local value: each line's amount and
fee at M3's rate of its settlement day (the sandbox M3's own rates), whatever the journals made of them.
"""

from __future__ import annotations

import duckdb

from m3_recon.journals import AccountMap
from m3_recon.money import convert, figure
from m3_recon.sandbox import Sandbox
from m3_recon.sandbox.m3_ledger import GL_SERIES
from m3_recon.sql import literal_list

IN_TRANSIT = ("pending", "in_transit")


def not_yet_at_the_bank(conn: duckdb.DuckDBPyConnection, sandbox: Sandbox) -> dict[str, int]:
    """Per processor, the local value of its settled lines whose payout has not reached the bank: a line in the
    local currency at its net, any other line's amount and fee each at M3's rate of its settlement day."""
    m3, local = sandbox.m3, sandbox.m3.local_currency
    totals: dict[str, int] = {}
    for processor, currency, day, amount, fee, net in conn.execute(f"""
            SELECT l.processor, l.currency, l.settlement_date, l.amount_minor, l.fee_minor, l.net_minor
            FROM core_settlement_lines l
            WHERE l.line_type <> 'payout' AND (l.payout_id IS NULL OR (l.processor, l.payout_id) IN (
                SELECT (processor, payout_id) FROM core_payout_reconciliation
                WHERE payout_status IN {literal_list(IN_TRANSIT)}))""").fetchall():
        rate = m3.gl_rate(currency, day)
        value = net if currency == local else convert(amount, currency, local, rate) - convert(fee, currency, local,
                                                                                               rate)
        totals[processor] = totals.get(processor, 0) + int(value)
    return totals


def print_trial_balance(conn: duckdb.DuckDBPyConnection, sandbox: Sandbox) -> bool:
    """Print the trial balance; True when every clearing account holds exactly its payouts in transit and
    the whole ledger balances."""
    local = sandbox.m3.local_currency

    def _money(minor: int) -> str:
        return figure(minor, local)

    accounts: dict[str, dict[str, list[int]]] = {}
    for line in sandbox.m3.gl_lines(sandbox.clock.now()):
        route = "gl" if line.voucher_series == GL_SERIES else "cash"
        sides = accounts.setdefault(line.ait1, {"gl": [0, 0], "cash": [0, 0]})[route]
        sides[0 if line.local_minor > 0 else 1] += abs(line.local_minor)
    print(f"\nM3 trial balance (local currency {local}; GL = GLS840MI vouchers, cash = ARS040MI payment "
          "vouchers):")
    print(f"  {'account':<10} {'GL debit':>15} {'GL credit':>15} {'cash debit':>15} {'cash credit':>15} {'balance':>15}")
    total = 0
    for account in sorted(accounts):
        gl, cash = accounts[account]["gl"], accounts[account]["cash"]
        balance = gl[0] - gl[1] + cash[0] - cash[1]
        total += balance
        print(f"  {account:<10} {_money(gl[0]):>15} {_money(gl[1]):>15} {_money(cash[0]):>15} {_money(cash[1]):>15} "
              f"{_money(balance):>15}")
    print(f"  {'total':<10} {'':>63} {_money(total):>15}")
    ok = total == 0
    in_transit = not_yet_at_the_bank(conn, sandbox)
    for processor, account in sorted(AccountMap.load().clearing.items()):
        sides = accounts.get(account, {"gl": [0, 0], "cash": [0, 0]})
        balance = sides["gl"][0] - sides["gl"][1] + sides["cash"][0] - sides["cash"][1]
        expected = int(in_transit.get(processor) or 0)
        ok &= balance == expected
        print(f"  clearing {processor:<10} {account}: {_money(balance)} in M3, not yet at the bank {_money(expected)} "
              f"{'= residue' if balance == expected else '!= RESIDUE'}")
    return ok
