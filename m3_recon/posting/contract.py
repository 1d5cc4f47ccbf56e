"""What the poster consumes: balanced GL voucher lines and the cash applications to make in M3.

``core_gl_journal_lines`` (route ``gl``) and ``core_cash_applications`` are produced by the journal
derivation (``m3_recon.journals``); the poster (``m3_recon.posting``) reads them and records its
progress in ``out_m3_postings``. Amounts are integer minor units; a GL amount is signed (+ debit,
− credit) and every voucher sums to zero per currency.
"""

GL_JOURNAL_LINE_COLUMNS = {
    "voucher_key": "VARCHAR NOT NULL",        # ≤ 15 characters, deterministic from content and period: M3 KEY1
    "line_number": "INTEGER NOT NULL",        # 1..n within the voucher
    "accounting_date": "DATE NOT NULL",
    "ait1": "VARCHAR NOT NULL",               # account
    "ait2": "VARCHAR", "ait3": "VARCHAR", "ait4": "VARCHAR", "ait5": "VARCHAR", "ait6": "VARCHAR", "ait7": "VARCHAR",
    "currency": "VARCHAR NOT NULL",
    "amount_minor": "BIGINT NOT NULL",        # + debit, − credit
    "voucher_text": "VARCHAR NOT NULL",       # ≤ 40 characters
    "processor": "VARCHAR NOT NULL",
    "payout_id": "VARCHAR",
    "source_id": "VARCHAR",
    "entry": "VARCHAR NOT NULL",              # what the line books: payment, fee, refund, payout, fx, rounding…
    "route": "VARCHAR NOT NULL",              # 'gl' (GLS840MI) — cash application lives in core_cash_applications
    "held_reason": "VARCHAR",                 # not NULL = the voucher must not be posted (e.g. unmapped category)
    "source_date": "DATE",                    # the settlement day of what the line books (window key)
    "local_minor": "BIGINT",                  # the amount in M3's local currency (ACAM); = amount_minor when local
}

CASH_APPLICATION_COLUMNS = {
    "voucher_key": "VARCHAR NOT NULL",        # ≤ 15 characters, one payment batch per key (M3 payment batch / KEY1)
    "line_number": "INTEGER NOT NULL",
    "accounting_date": "DATE NOT NULL",       # the payment date
    "customer": "VARCHAR NOT NULL",           # CUNO
    "invoice_number": "VARCHAR NOT NULL",     # CINO
    "invoice_year": "INTEGER NOT NULL",       # INYR
    "currency": "VARCHAR NOT NULL",           # invoice currency
    "amount_minor": "BIGINT NOT NULL",        # PYAM, positive, in the invoice currency
    "processor": "VARCHAR NOT NULL",
    "source_id": "VARCHAR NOT NULL",          # the payment line
    "payout_id": "VARCHAR",
    "local_minor": "BIGINT",                  # M3's booked local value of the amount (what clearing receives)
    "settlement_minor": "BIGINT",             # what it moves clearing by in the settlement currency (not sent):
                                              # local_minor when that is the local currency, else what settled
}

POSTING_COLUMNS = {
    "voucher_key": "VARCHAR NOT NULL",
    "route": "VARCHAR NOT NULL",              # 'gl' or 'cash_application'
    "accounting_date": "DATE NOT NULL",
    "line_count": "INTEGER NOT NULL",
    "content_hash": "VARCHAR NOT NULL",       # what was (to be) posted; a changed voucher is never silently re-posted
    "status": "VARCHAR NOT NULL",             # pending / sent / verified / failed / held
    "attempts": "INTEGER NOT NULL",
    "last_error": "VARCHAR",
    "m3_voucher_number": "VARCHAR",
    "updated_at_utc": "TIMESTAMP NOT NULL",
    "m3_batch": "VARCHAR",                    # the M3 batch it goes in: GLS840 KEY1 (gl) or ARS040 PBID (cash)
    "sent_at_utc": "TIMESTAMP",               # first time it was sent; NULL = M3 has never seen it
}
