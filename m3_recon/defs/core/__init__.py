"""The canonical layer: every processor's settlements as one validated model, with a quarantine."""
