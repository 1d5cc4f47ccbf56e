"""Posting to M3 exactly once: the outbox, GL vouchers through GLS840MI, cash application through ARS040MI."""
