"""The journal and posting assets."""

import dagster as dg

from m3_recon.defs.post.assets import journals, out_m3_postings

defs = dg.Definitions(assets=[journals, out_m3_postings])
