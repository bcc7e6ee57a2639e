"""Reading a store's chunks with dask, each chunk once and crc-checked, in bounded blocks."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.store import LogitStore, StoreError
from pipeline.store_report.stats import block_stats, stat_length

# A dask block is a run of whole stored chunks along the samples axis, about BLOCK_BYTES of
# stored logits: chunk-aligned (no chunk is read twice or by two tasks), and few enough
# blocks that dask's per-block cost (graph memory, scheduling: a few ms per block here)
# stays small next to reading and reducing 16 MiB (62.6k ImageNet chunks -> 15.7k blocks).
# `block_stats` runs on one stored chunk's rows at a time, so its float32 temporaries stay
# at a few times one chunk per thread.

BLOCK_BYTES = 16 << 20


def chunk_keys(selection: tuple[slice, ...], chunks: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Keys of the stored chunks a chunk-aligned selection covers."""
    ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(selection, chunks)]
    return list(itertools.product(*ranges))


def _shape(selection: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in selection)


class CheckedArray:
    """A zarr array as dask reads it: a chunk that fails its checksum raises a StoreError
    naming the array and the chunk; chunks of write units that are not done are never read
    (they may be mid-write) and stand in as the fill value. Otherwise it is what
    `dask.array.from_zarr` wraps: zarr's own reads of whole stored chunks.
    """

    def __init__(self, store_path: Path, array: zarr.Array, done: np.ndarray):
        self.store_path, self.array = store_path, array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.done = done.reshape(done.shape + (1,) * (array.ndim - done.ndim))  # over the chunk grid

    def __getitem__(self, selection: tuple[slice, ...]) -> np.ndarray:
        keys = chunk_keys(selection, self.array.chunks)
        done = [bool(self.done[k]) for k in keys]
        if not any(done):
            return np.broadcast_to(np.asarray(self.array.fill_value, dtype=self.dtype), _shape(selection))
        if all(done):
            try:
                return self.array[selection]
            except ValueError:
                pass  # find and name the bad chunk below
        out = np.full(_shape(selection), self.array.fill_value, dtype=self.dtype)
        for key, finished in zip(keys, done):
            if finished:
                part = tuple(slice(k * c, min((k + 1) * c, n))
                             for k, c, n in zip(key, self.array.chunks, self.shape))
                local = tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part, selection))
                out[local] = self._read_chunk(key, part)
        return out

    def _read_chunk(self, key: tuple[int, ...], part: tuple[slice, ...]) -> np.ndarray:
        try:
            return self.array[part]
        except ValueError as err:
            name = self.array.path
            raise StoreError(
                f"{self.store_path}: {name} chunk {key} ({name}/{self.array.metadata.encode_chunk_key(key)}) is "
                f"corrupted ({err}); delete the store, or that chunk and its unit's done marker, and dump again"
            ) from None


class ViewLabels:
    """[slots, samples] int64, lazily: the label of each view whose write unit is done, else -1.

    One dask input carries both the labels (broadcast over slots) and the done markers.
    """

    def __init__(self, labels: np.ndarray, done: np.ndarray, chunk_samples: int):
        self.labels, self.done, self.chunk_samples = labels, done, chunk_samples
        self.shape, self.dtype, self.ndim = (done.shape[0], len(labels)), np.dtype(np.int64), 2

    def __getitem__(self, selection: tuple[slice, ...]) -> np.ndarray:
        slots, samples = selection
        rows = np.arange(samples.start, samples.stop)
        unit_done = self.done[slots][:, rows // self.chunk_samples]
        return np.where(unit_done, self.labels[samples].astype(np.int64), -1)


def as_dask(array: CheckedArray | ViewLabels, chunks: tuple[int, ...]) -> Any:
    import dask.array as da

    return da.from_array(array, chunks=chunks, name=False, asarray=True,
                         meta=np.empty((0,) * array.ndim, dtype=array.dtype))


def block_chunks(array: zarr.Array) -> tuple[int, ...]:
    """Dask chunks for `array`: its stored chunks, grouped along axis -2 (samples) to ~BLOCK_BYTES."""
    chunks = list(array.chunks)
    stored = int(np.prod(chunks)) * array.dtype.itemsize
    chunks[-2] *= max(1, BLOCK_BYTES // max(stored, 1))
    return tuple(chunks)


def read_small(store: LogitStore, name: str) -> np.ndarray:
    """A whole small array (labels, markers), with the store's one-line error on corruption."""
    try:
        return store.group[name][...]
    except KeyError:
        raise StoreError(f"{store.path}: no array {name!r}; not a complete rld logit store layout") from None
    except ValueError as err:
        raise StoreError(f"{store.path}: {name} is corrupted ({err})") from None


def per_slot_partials(
    logits: Any, labels: Any, rows_per_pass: int, *, argmax: Any = None, views: Any = None, input_crc: Any = None,
) -> Any:
    """Dask array [slots, K (+ k)]: the partial vectors of every block, summed per slot.

    `logits` is [slots, samples, C] and `labels` [slots, samples] (-1 where the view's unit
    is not done), in the same blocks. One task per block reads that block of every per-view
    array (the stored argmax, view parameters and input crc too, so their checksums are
    verified in the same pass) and returns `block_stats` followed, when `views` is given,
    by the sums of the k view parameters over counted views.
    """
    import dask.array as da

    classes = logits.shape[-1]
    n_stats = stat_length(classes)
    length = n_stats + (views.shape[2] if views is not None else 0)
    args = [logits, "sjc", labels, "sj"]
    for extra, index in ((argmax, "sj"), (views, "sjp"), (input_crc, "sj")):
        if extra is not None:
            args += [extra, index]

    def per_block(block: list[np.ndarray], block_labels: np.ndarray, *checks: Any) -> np.ndarray:
        # Contracted axes (classes, view parameters) arrive as lists of their single block:
        # unwrapped rather than concatenated, which would copy every block.
        (block,) = block
        checks = tuple(c[0] if isinstance(c, list) else c for c in checks)
        out = np.zeros((1, 1, length))
        if not (block_labels >= 0).any():  # no unit of this block is done
            return out
        for a in range(0, block.shape[1], rows_per_pass):
            rows = slice(a, a + rows_per_pass)
            argmax_rows = checks[0][:, rows] if checks else None
            out[0, 0, :n_stats] += block_stats(block[:, rows], block_labels[:, rows], argmax_rows)
        if views is not None:
            out[0, 0, n_stats:] = checks[1][block_labels >= 0].sum(0, dtype=np.float64)
        return out

    blocks = da.blockwise(per_block, "sjz", *args, new_axes={"z": length}, adjust_chunks={"j": 1},
                          dtype=np.float64, meta=np.empty((0, 0, 0)))
    return blocks.sum(axis=1)
