"""Vendor clients without Dagster: Infor M3, Stripe, PayTrace and Heartland (GP API), sharing one HTTP policy
and one bearer-token cache (``http.py``). The Dagster resources in ``m3_recon/defs`` only configure them."""
