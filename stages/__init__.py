"""Thin click entry points, one per workflow stage, grouped under the `rld` console script."""
