"""The logit store: one Zarr v3 group per teacher x dataset split x view spec.

Layout (FORMAT_VERSION 1; cache/README.md documents it for users):

    <store>.zarr/
      zarr.json          group attributes: provenance (`pipeline.dump.build_provenance`) and layout
      logits             [slots, samples, classes] float16|float32, raw teacher logits
      views              [slots, samples, k] the augmentation parameters of every view
      argmax             [slots, samples] int32, the teacher's top class per view
      input_crc          [slots, samples] uint32, crc32 of the uint8 view the teacher saw
      labels             [samples] int64
      done               [slots, chunks] uint8, 1 once a write unit is durable
      eval/logits        [test samples, classes] float32, the un-augmented test split
      eval/labels        [test samples] int64
      eval/done          [eval chunks] uint8

A write unit is one chunk: (slot, a run of `chunk_samples` samples), or one chunk of the
test split. Every array of the unit shares that chunking, so a unit owns whole chunk files
and N processes can fill disjoint units of one store at once. A unit's marker is written
only after its chunks are on disk (fsync), so a killed dump resumes with the missing units
and the result equals an uninterrupted run. Chunks carry a crc32c checksum: a corrupted
file is an error, never silently wrong logits. Compression is off: fp16 logits gain ~9%
from zstd and read 2-3x slower.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from pipeline.errors import RLDError, writing
from pipeline.views import family_from_dict
if TYPE_CHECKING:
    from pipeline.inference import Numerics

FORMAT_VERSION = 1
FORMAT_NAME = "rld-logit-store"
CHUNK_BYTES = 4 << 20  # ~4 MiB per logits chunk: fast whole-slot reads, cheap units
DTYPES = ("float16", "float32")

# Fields that decide a store's content: its id hashes them and writers and readers must
# agree on them. Everything else in the attributes (accuracy, file names, times) is record.
IDENTITY_FIELDS = (
    "teacher.arch",
    "teacher.num_classes",
    "teacher.in_channels",
    "teacher.weights_sha256",
    "dataset.name",
    "dataset.split",
    "dataset.size",
    "dataset.num_classes",
    "dataset.subset",
    "dataset.val_split",
    "dataset.fingerprint",
    "eval_dataset.fingerprint",
    "normalization.mean",
    "normalization.std",
    "views.policy",
    "views.count",
    "views.seed",
    "views.family",
    "dtype",
    # The teacher's numerics (pipeline.inference.Numerics): autocast, memory format and
    # device type each change the logits, so a resumed dump must not mix them.
    "inference.device",
    "inference.amp",
    "inference.channels_last",
)


class StoreError(RLDError, RuntimeError):
    """A store is missing, foreign, incomplete, corrupted or does not match a request."""


class ProvenanceMismatch(StoreError):
    """The store was made from something other than what was asked for."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not name == "views.family":
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def identity(provenance: dict[str, Any]) -> dict[str, Any]:
    """The content-deciding fields of a provenance record, flattened."""
    flat = _flatten(provenance)
    return {k: _jsonable(flat.get(k)) for k in IDENTITY_FIELDS}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def store_id(provenance: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the identity fields: equal ids, equal content."""
    blob = json.dumps(identity(provenance), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def compare(expected: dict[str, Any], found: dict[str, Any], fields: tuple[str, ...] = IDENTITY_FIELDS) -> list[str]:
    """Lines 'field: store has X, requested Y' for every identity field that differs."""
    want, have = _flatten(expected), _flatten(found)
    lines = []
    for field in fields:
        if field in want and _jsonable(want[field]) != _jsonable(have.get(field)):
            a, b = _jsonable(have.get(field)), _jsonable(want[field])
            if isinstance(a, dict) and isinstance(b, dict):  # a family: show only the keys that differ
                keys = [k for k in {**a, **b} if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
                a, b = ({k: d.get(k, _ABSENT) for k in keys} for d in (a, b))
                lines.append(f"{field}: store has {_entries(a)}, requested {_entries(b)}")
            else:
                lines.append(f"{field}: store has {_short(a)}, requested {_short(b)}")
    if lines and "dataset.spec" in want and want["dataset.spec"] != have.get("dataset.spec"):
        # A fingerprint says only that the images differ; the dataset's options say which setting made them.
        lines.insert(0, _option_differences(str(have.get("dataset.spec", "")), str(want["dataset.spec"])))
    return lines


def _spec_options(spec: str) -> dict[str, str]:
    """'imagefolder:resize=32,channels=1' -> {'dataset': 'imagefolder', 'resize': '32', 'channels': '1'}."""
    name, _, rest = spec.partition(":")
    return {"dataset": name, **dict(item.partition("=")[::2] for item in rest.split(",") if item)}


def _option_differences(stored: str, requested: str) -> str:
    """'resize: store 32, requested none' for every dataset option that differs."""
    a, b = _spec_options(stored), _spec_options(requested)
    return "; ".join(f"{key}: store {a.get(key, 'none')}, requested {b.get(key, 'none')}"
                     for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key))


_ABSENT = "(absent)"


def _entries(d: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v if v is _ABSENT else _short(v)}" for k, v in d.items()) + "}"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:12] + "…"


@dataclass(frozen=True)
class Layout:
    slots: int
    samples: int
    classes: int
    param_count: int
    param_dtype: str
    dtype: str
    chunk_samples: int
    eval_samples: int
    eval_chunk_samples: int

    @property
    def chunks(self) -> int:
        return -(-self.samples // self.chunk_samples)

    @property
    def eval_chunks(self) -> int:
        return -(-self.eval_samples // self.eval_chunk_samples) if self.eval_samples else 0

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        return chunk * self.chunk_samples, min((chunk + 1) * self.chunk_samples, self.samples)

    def eval_range(self, chunk: int) -> tuple[int, int]:
        return chunk * self.eval_chunk_samples, min((chunk + 1) * self.eval_chunk_samples, self.eval_samples)

    @property
    def view_bytes(self) -> int:
        """Bytes one cached view costs: its logits, parameters and checks."""
        return self.classes * np.dtype(self.dtype).itemsize + self.param_count * np.dtype(self.param_dtype).itemsize + 8

    @property
    def predicted_bytes(self) -> int:
        return self.slots * self.samples * self.view_bytes + self.eval_samples * self.classes * 4 + (self.samples + self.eval_samples) * 8

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_layout(
    *, slots: int, samples: int, classes: int, param_count: int, param_dtype: str, dtype: str,
    eval_samples: int, chunk_samples: int | None = None,
) -> Layout:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return Layout(
        slots=slots, samples=samples, classes=classes, param_count=param_count, param_dtype=param_dtype,
        dtype=dtype, chunk_samples=chunk_samples or _even_chunks(samples, classes * np.dtype(dtype).itemsize),
        eval_samples=eval_samples,
        eval_chunk_samples=chunk_samples or _even_chunks(eval_samples, classes * 4),
    )


def _even_chunks(samples: int, row_bytes: int) -> int:
    """Rows per chunk: at most ~CHUNK_BYTES, split evenly. Zarr stores an edge chunk at full
    size, so 50,000 rows in 20,736-row chunks would store 62,208."""
    count = -(-samples * row_bytes // CHUNK_BYTES)
    return max(1, -(-samples // max(count, 1)))


@dataclass(frozen=True, order=True)
class Unit:
    """One chunk of work: (slot, chunk) of the train views, or slot -1 for a test chunk."""

    slot: int
    chunk: int

    @property
    def is_eval(self) -> bool:
        return self.slot < 0

    def __str__(self) -> str:
        return f"eval chunk {self.chunk}" if self.is_eval else f"slot {self.slot} chunk {self.chunk}"


class LogitStore:
    """A complete or growing store on disk. Open with `LogitStore.open` or `create_or_open`."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path, self.group = path, group
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.layout = Layout(**self.attrs["layout"])
        self._arrays: dict[str, zarr.Array] = {}

    def array(self, name: str) -> zarr.Array:
        """The store's array `name`, opened once: each `group[name]` reads its metadata from disk
        again (about 1 ms, a quarter of a write unit's time)."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    # -- opening --------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "LogitStore":
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no such logit store")
        if not (path / "zarr.json").is_file():
            raise StoreError(f"{path}: not a logit store (no zarr.json; is this the right directory?)")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except Exception as err:
            raise StoreError(f"{path}: not a readable Zarr v3 group ({err})") from None
        fmt = group.attrs.get("format", {})
        if not isinstance(fmt, dict) or fmt.get("name") != FORMAT_NAME:
            raise StoreError(f"{path}: a Zarr group, but not an rld logit store (attribute format.name != {FORMAT_NAME!r})")
        if fmt.get("version") != FORMAT_VERSION:
            raise StoreError(f"{path}: store format version {fmt.get('version')}, this code reads version {FORMAT_VERSION}")
        family = (group.attrs.get("views") or {}).get("family")
        try:
            if family is not None:
                family_from_dict(family)
        except (ValueError, TypeError) as err:
            # Its stored view parameters would be replayed as other views: never mix them.
            raise StoreError(f"{path}: made with {err}; dump it again with this code") from None
        return cls(path, group)

    @property
    def provenance(self) -> dict[str, Any]:
        return {k: v for k, v in self.attrs.items() if k not in ("format", "layout", "complete", "completed")}

    @property
    def numerics(self) -> "Numerics":
        """How the teacher computed these logits (device type, autocast, memory format)."""
        from pipeline.inference import Numerics

        return Numerics.from_dict(self.attrs.get("inference", {}))

    @property
    def id(self) -> str:
        return self.attrs["store_id"]

    def check(self, expected: dict[str, Any], fields: tuple[str, ...] = IDENTITY_FIELDS) -> None:
        """Raise ProvenanceMismatch naming every differing field of `expected` (partial dicts welcome)."""
        diffs = compare(expected, self.provenance, fields)
        if diffs:
            raise ProvenanceMismatch(f"{self.path} was made from something else: " + "; ".join(diffs))

    # -- progress -------------------------------------------------------------------

    def units(self) -> list[Unit]:
        """Every unit, test chunks first: they are small and give the teacher's accuracy early."""
        lay = self.layout
        return [Unit(-1, c) for c in range(lay.eval_chunks)] + [
            Unit(s, c) for s in range(lay.slots) for c in range(lay.chunks)
        ]

    def done_mask(self) -> tuple[np.ndarray, np.ndarray]:
        """(train [slots, chunks] bool, eval [eval chunks] bool) from the on-disk markers."""
        return self.array("done")[:].astype(bool), self.array("eval/done")[:].astype(bool)

    def pending(self, shard: tuple[int, int] = (0, 1)) -> list[Unit]:
        """Units of shard I of N that are not yet done (units are dealt round-robin)."""
        train, evals = self.done_mask()
        index, count = shard
        out = []
        for i, unit in enumerate(self.units()):
            finished = evals[unit.chunk] if unit.is_eval else train[unit.slot, unit.chunk]
            if i % count == index and not finished:
                out.append(unit)
        return out

    @property
    def complete(self) -> bool:
        train, evals = self.done_mask()
        return bool(train.all() and evals.all())

    def require_complete(self) -> None:
        train, evals = self.done_mask()
        if not (train.all() and evals.all()):
            units = [str(Unit(-1, int(c))) for c in np.flatnonzero(~evals)]
            units += [str(Unit(int(s), int(c))) for s, c in zip(*np.nonzero(~train))]
            shown = ", ".join(units[:6]) + (", ..." if len(units) > 6 else "")
            raise StoreError(
                f"{self.path} is incomplete: {len(units)} of {train.size + evals.size} write units missing "
                f"({shown}; run the same dump again to finish it)"
            )

    def mark_complete_if_done(self) -> bool:
        if not self.complete:
            return False
        if not self.attrs.get("complete"):
            now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            self.group.attrs.update({"complete": True, "completed": now})
            self.attrs.update({"complete": True, "completed": now})
        return True

    # -- writing --------------------------------------------------------------------

    def write_unit(
        self, unit: Unit, logits: np.ndarray, *, views: np.ndarray | None = None,
        input_crc: np.ndarray | None = None,
    ) -> None:
        """Write one unit's chunks, make them durable, then set its marker."""
        with writing(self.path):
            self._write_unit(unit, logits, views, input_crc)

    def _write_unit(self, unit: Unit, logits: np.ndarray, views: np.ndarray | None, input_crc: np.ndarray | None) -> None:
        lay = self.layout
        if unit.is_eval:
            a, b = lay.eval_range(unit.chunk)
            _check_block("eval logits", logits, (b - a, lay.classes))
            self.array("eval/logits")[a:b] = logits.astype(np.float32, copy=False)
            self._fsync(self.array("eval/logits"), (unit.chunk, 0))
            self.array("eval/done")[unit.chunk] = 1
            return
        a, b = lay.chunk_range(unit.chunk)
        _check_block("logits", logits, (b - a, lay.classes))
        _check_block("views", views, (b - a, lay.param_count))
        _check_block("input_crc", input_crc, (b - a,))
        s = unit.slot
        self.array("logits")[s, a:b] = logits.astype(lay.dtype, copy=False)
        self.array("views")[s, a:b] = views.astype(lay.param_dtype, copy=False)
        self.array("argmax")[s, a:b] = logits.argmax(1).astype(np.int32)
        self.array("input_crc")[s, a:b] = input_crc.astype(np.uint32, copy=False)
        for name, key in (("logits", (s, unit.chunk, 0)), ("views", (s, unit.chunk, 0)),
                          ("argmax", (s, unit.chunk)), ("input_crc", (s, unit.chunk))):
            self._fsync(self.array(name), key)
        self.array("done")[s, unit.chunk] = 1

    def _fsync(self, array: zarr.Array, chunk: tuple[int, ...]) -> None:
        path = self.path / array.path / array.metadata.encode_chunk_key(chunk)
        if path.exists():  # absent when the chunk equals the fill value
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- reading --------------------------------------------------------------------

    def _read(self, name: str, selection: tuple, what: str) -> np.ndarray:
        try:
            return self.array(name)[selection]
        except ValueError as err:
            raise StoreError(f"{self.path}: {name} {what} is corrupted ({err}); delete the store and dump it again") from None

    def read_logits(self, slot: int) -> np.ndarray:
        """All samples' logits [N, C] of one slot, in the stored dtype."""
        lay = self.layout
        out = np.empty((lay.samples, lay.classes), dtype=lay.dtype)
        for c in range(lay.chunks):
            a, b = lay.chunk_range(c)
            out[a:b] = self._read("logits", (slot, slice(a, b)), f"chunk (slot {slot}, samples {a}-{b - 1})")
        return out

    def read_unit(self, unit: Unit, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits, views, input_crc) of samples start..stop-1 of a train unit's slot."""
        where, what = (unit.slot, slice(start, stop)), f"of {unit} (samples {start}-{stop - 1})"
        return (self._read("logits", where, what), self._read("views", where, what),
                self._read("input_crc", where, what))

    def read_slot(self, name: str, slot: int) -> np.ndarray:
        """One slot of a per-view array other than logits: "views", "argmax" or "input_crc"."""
        return self._read(name, (slot,), f"of slot {slot}")

    def labels(self) -> np.ndarray:
        return self._read("labels", (slice(None),), "")

    def eval_logits(self) -> tuple[np.ndarray, np.ndarray]:
        """(test logits [M, C] float32, test labels [M])."""
        return self._read("eval/logits", (slice(None),), ""), self._read("eval/labels", (slice(None),), "")

    def gather(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(views [N, k], logits [N, C], input_crc [N]) of view (slots[n], n) for every sample n.

        Reads one slot at a time, so memory stays at one slot beyond the result.
        """
        lay = self.layout
        slots = np.asarray(slots)
        views = np.empty((lay.samples, lay.param_count), dtype=lay.param_dtype)
        logits = np.empty((lay.samples, lay.classes), dtype=lay.dtype)
        crc = np.empty(lay.samples, dtype=np.uint32)
        for slot in np.unique(slots):
            rows = np.flatnonzero(slots == slot)
            views[rows] = self.read_slot("views", int(slot))[rows]
            logits[rows] = self.read_logits(int(slot))[rows]
            crc[rows] = self.read_slot("input_crc", int(slot))[rows]
        return views, logits, crc

    def nbytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


class UnitWriter:
    """Writes finished units in a background thread so the producer (a teacher, an ensemble) keeps computing.

    At most `depth` units wait in memory; `after_unit` runs (in the caller's thread) once a
    unit is durable. On an error the running write finishes and queued ones are dropped:
    their markers were never set, so a rerun redoes them.
    """

    def __init__(self, store: LogitStore, after_unit: Callable[[Unit], None] | None, depth: int = 2):
        self.store, self.after_unit, self.depth = store, after_unit, depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self.queue: deque[tuple[Unit, Future]] = deque()
        self.written = 0

    def submit(self, unit: Unit, logits: np.ndarray, **arrays: np.ndarray) -> None:
        self.queue.append((unit, self.pool.submit(self.store.write_unit, unit, logits, **arrays)))
        self._settle(self.depth)

    def _settle(self, limit: int) -> None:
        while len(self.queue) > limit:
            unit, future = self.queue.popleft()
            future.result()
            self.written += 1
            if self.after_unit is not None:
                self.after_unit(unit)

    def __enter__(self) -> "UnitWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        try:
            if exc_type is None:
                self._settle(0)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _check_block(name: str, block: np.ndarray | None, shape: tuple[int, ...]) -> None:
    if block is None or tuple(block.shape) != shape:
        got = None if block is None else tuple(block.shape)
        raise ValueError(f"{name} block must have shape {shape}, got {got}")


def create_or_open(
    path: str | os.PathLike, provenance: dict[str, Any], layout: Layout, labels: np.ndarray,
    eval_labels: np.ndarray,
) -> LogitStore:
    """Create the store exactly once (atomic rename), or open it and check it matches.

    Several shard processes may call this at the same moment: each builds the empty store
    in a private temporary directory and renames it into place; the losers discard theirs
    and open the winner's. An existing store made from anything else is refused.
    """
    path = Path(path)
    if not path.exists():
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with writing(path):
                _initialise(tmp, provenance, layout, labels, eval_labels)
            os.rename(tmp, path)
        except OSError:
            if not path.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    store = LogitStore.open(path, mode="r+")
    store.check(provenance)
    if store.layout.slots != layout.slots or store.layout.samples != layout.samples:
        raise ProvenanceMismatch(f"{path}: layout {store.layout} does not match {layout}")
    return store


def _initialise(path: Path, provenance: dict[str, Any], layout: Layout, labels: np.ndarray, eval_labels: np.ndarray) -> None:
    lay = layout
    g = zarr.open_group(str(path), mode="w-")
    crc = [Crc32cCodec()]

    def array(name: str, shape: tuple, chunks: tuple, dtype: str, dims: tuple[str, ...], fill: Any = 0) -> zarr.Array:
        return g.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, compressors=crc, fill_value=fill,
            dimension_names=dims,
        )

    array("logits", (lay.slots, lay.samples, lay.classes), (1, lay.chunk_samples, lay.classes), lay.dtype,
          ("slot", "sample", "class"), fill=np.nan)
    array("views", (lay.slots, lay.samples, lay.param_count), (1, lay.chunk_samples, lay.param_count),
          lay.param_dtype, ("slot", "sample", "param"))
    array("argmax", (lay.slots, lay.samples), (1, lay.chunk_samples), "int32", ("slot", "sample"), fill=-1)
    array("input_crc", (lay.slots, lay.samples), (1, lay.chunk_samples), "uint32", ("slot", "sample"))
    array("labels", (lay.samples,), (lay.samples,), "int64", ("sample",))[:] = labels
    array("done", (lay.slots, lay.chunks), (1, 1), "uint8", ("slot", "chunk"))
    g.require_group("eval")
    array("eval/logits", (lay.eval_samples, lay.classes), (lay.eval_chunk_samples, lay.classes), "float32",
          ("sample", "class"), fill=np.nan)
    array("eval/labels", (lay.eval_samples,), (max(1, lay.eval_samples),), "int64", ("sample",))[:] = eval_labels
    array("eval/done", (max(lay.eval_chunks, 0),), (1,), "uint8", ("chunk",))
    g.attrs.update(
        {
            "format": {"name": FORMAT_NAME, "version": FORMAT_VERSION},
            **_jsonable(provenance),
            "store_id": store_id(provenance),
            "layout": layout.to_dict(),
            "complete": False,
        }
    )
