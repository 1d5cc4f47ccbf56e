"""The reconciliation assets and the alert webhook resource (configured from the environment)."""

import os

import dagster as dg

from m3_recon.defs.reconcile.assets import (AlertWebhook, core_payment_allocations, core_payout_reconciliation,
                                            out_alerts, out_analyst_warehouse, out_recon_exceptions,
                                            out_reconciliation_report)
from m3_recon.defs.reconcile.resolve import resolve_exception


def alert_webhook_from_env() -> AlertWebhook:
    """M3_RECON_ALERT_WEBHOOK_URL may embed a token, so it is read through EnvVar when set."""
    if os.environ.get("M3_RECON_ALERT_WEBHOOK_URL"):
        return AlertWebhook(url=dg.EnvVar("M3_RECON_ALERT_WEBHOOK_URL"))
    return AlertWebhook()


defs = dg.Definitions(assets=[core_payment_allocations, core_payout_reconciliation, out_recon_exceptions, out_alerts,
                              out_analyst_warehouse, out_reconciliation_report],
                      jobs=[resolve_exception], resources={"alert_webhook": alert_webhook_from_env()})
