"""Journals for M3 and posting them exactly once: vouchers, cash applications, the outbox."""
