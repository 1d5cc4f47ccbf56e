"""``m3-recon bank import``, ``m3-recon webhooks`` and ``m3-recon customers sync``: closing the loop by hand.

* ``bank import FILE…`` stores BAI2 / camt.053 statements in the warehouse now (the folder sensor does
  the same for files dropped in ``M3_RECON_BANK_DIR``); a file or line seen before adds nothing.
* ``webhooks`` serves the Stripe webhook receiver (``STRIPE_WEBHOOK_SECRET``) until stopped.
* ``customers sync`` lists the Stripe customers whose metadata lacks their M3 number; ``--write`` sets it.
"""

from __future__ import annotations

from m3_recon import settings


def add_commands(subparsers) -> None:
    bank = subparsers.add_parser("bank", help="bank statements (BAI2, camt.053)")
    bank_commands = bank.add_subparsers(dest="bank_command", required=True)
    importing = bank_commands.add_parser("import", help="import statement files into the warehouse now")
    importing.add_argument("files", nargs="+", help="BAI2 or camt.053 files")
    importing.set_defaults(func=cmd_bank_import)
    webhooks = subparsers.add_parser("webhooks", help="receive Stripe webhooks (verified, stored for the sensor)")
    webhooks.add_argument("--host", default="127.0.0.1")
    webhooks.add_argument("--port", type=int, default=8765)
    webhooks.set_defaults(func=cmd_webhooks)
    customers = subparsers.add_parser("customers", help="the customer cross-reference")
    customer_commands = customers.add_subparsers(dest="customers_command", required=True)
    sync = customer_commands.add_parser("sync", help="write M3 numbers into Stripe customer metadata "
                                                     "(a dry run unless --write)")
    sync.add_argument("--write", action="store_true", help="make the changes (default: only list them)")
    sync.set_defaults(func=cmd_customers_sync)


def cmd_bank_import(args) -> int:
    from m3_recon.defs.bank.assets import import_statements
    from m3_recon.defs.bank.statements import StatementError
    from m3_recon.storage import warehouse_resource_from_env

    try:
        with warehouse_resource_from_env().get_connection() as conn:
            results = import_statements(conn, args.files)
    except (StatementError, OSError) as error:
        print(f"bank import failed: {error}")
        return 1
    for result in results:
        print(f"{result.path}: " + ("already imported (same content)" if result.duplicate_file else
                                    f"{result.lines} lines, {result.new_lines} new"))
    return 0


def cmd_webhooks(args) -> int:
    from m3_recon.webhooks import serve

    try:
        serve(args.host, args.port)
    except ValueError as error:
        print(f"webhooks: {error}")
        return 1
    return 0


def cmd_customers_sync(args) -> int:
    from m3_recon.customer_sync import sync_customers
    from m3_recon.defs.stripe.definitions import stripe_resource_from_env
    from m3_recon.storage import warehouse_resource_from_env

    import dagster as dg

    key = settings.customer_metadata_key()
    with dg.build_resources({"stripe": stripe_resource_from_env()}) as built, \
            warehouse_resource_from_env().get_connection() as conn:  # EnvVar secrets resolved as in a run
        changes = sync_customers(conn, built.stripe.client(), key, write=args.write)
    verb = "set" if args.write else "would set"
    for change in changes:
        print(f"{change.stripe_customer}: {verb} metadata {key}={change.m3_customer} (now {change.current or 'unset'})")
    print(f"{len(changes)} customer(s) {'updated' if args.write else 'to update; rerun with --write to apply'}")
    return 0
