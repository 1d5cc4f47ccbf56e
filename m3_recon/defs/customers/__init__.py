"""The customer cross-reference (Stripe customer -> M3 customer)."""
