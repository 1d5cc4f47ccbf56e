"""m3-recon: reconcile card-processor settlements with Infor M3 and post balanced journals."""

__version__ = "0.1.0"
