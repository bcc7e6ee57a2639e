"""`rld inspect`: what a logit store holds, whether it is whole, and how good its teacher is.

One pass over the store with dask (threaded scheduler), chunk by chunk: every statistic is
a sum of small per-chunk partial vectors (`block_stats`), so memory stays at a few chunks
whatever the store's size (100 slots x 1.28M ImageNet samples x 1000 fp16 classes is 62.6k
chunks of 4 MB; each becomes a 24 KB vector, summed per slot in a tree by dask).

Only write units whose done marker is set count, and only their chunks are read: an
incomplete store (or one a dump is still filling) is reported, not refused. Every chunk
that is read passes zarr's crc32c check, so a successful inspect also proves those chunks
intact; a failure is reported as a `StoreError` naming the array and the chunk.

Conventions (the same as the official RLD code's, pipeline/methods/rld.py):
- the teacher is right on a view when argmax_c t_c == y, first index on ties, and y is in
  the top-5 when fewer than 5 classes rank before it in that order;
- the MCD mask of a view is {c : t_c >= t_y}: its size is 1 exactly when t_y is the strict
  maximum, and ties with t_y count in the mask;
- confidence is the softmax maximum at T = 1; ECE uses 15 equal-width bins over (0, 1]
  (a confidence c falls in bin b when b/15 < c <= (b+1)/15) and is
  sum_b |acc_b - conf_b| * n_b / n.
Shares are reported in percent (`*_pct`), confidences as fractions.
"""

from pipeline.store_report.report import inspect_store
from pipeline.store_report.text import format_report

__all__ = ["format_report", "inspect_store"]
