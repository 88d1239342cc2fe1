"""Analysis of stored records: summaries, reports, comparisons and the regression check's comparisons.

Nothing here imports torch or trains: every number is recomputed from JSON records, so reports can be
regenerated on any machine (a login node, a laptop without PyTorch's accelerators).
"""
