"""The journal and posting assets."""

import dagster as dg

from m3_recon.defs.post.assets import journals

defs = dg.Definitions(assets=[journals])
