"""Pictures in and out: safe decoding (EXIF, every PIL mode, pixel caps) and rendering maps as PNG/overlays.

Used by index_store (building), service (uploads, heatmaps) and evaluation (figures). Knows nothing of HTTP or
of the model.
"""
