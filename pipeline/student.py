"""What a student trains on: its data splits, its views and its teacher signal.

A student from a logit store takes its data from the store (dataset, subsets, validation
split, and the data root it was read from, while that still exists), so a user names the
store and nothing else; whatever they do name must agree with it. Without a store the data and views come from the request, and the teacher, if any, runs
online.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data import DatasetError, ImageSet, load_splits_with_val
from pipeline.errors import ConfigError, NeedsTeacher
from pipeline.inference import Numerics, default_family
from pipeline.methods import get_method
from pipeline.runtime import resolve_device
from pipeline.store import LogitStore, StoreError
from pipeline.teacher import load_teacher
from pipeline.signals import OnlineSignal, StoreSignal, ViewsOnly
from pipeline.splits import ValSplit
from pipeline.views import ViewSpec, parse_family

DEFAULT_EPOCHS = 240  # the paper's; a per-epoch store of E views sets E instead


@dataclass(frozen=True)
class DataRequest:
    """The data options a user gave (None: from the store, or the dataset's default)."""

    dataset: str | None = None
    root: str | None = None
    subset: int | None = None
    test_subset: int | None = None
    val_split: ValSplit | None = None
    augment: str | None = None


@dataclass
class StudentInputs:
    train_set: ImageSet
    val_set: ImageSet | None
    test_set: ImageSet
    signal: ViewsOnly
    epochs: int


def student_inputs(
    loss: str, data: DataRequest, *, store_path: str | None = None, expected_teacher: str | None = None,
    online_teacher: str | None = None, views: str | None = None, view_seed: int | None = None, seed: int = 0,
    epochs: int | None = None, device: str = "auto",
) -> StudentInputs:
    """Resolve a student request into its splits, teacher signal and epoch count.

    `views`/`view_seed` apply without a store (per-epoch:E | pool:P | exhaustive; seed
    default `seed`). `expected_teacher` only checks that the store comes from that teacher;
    `online_teacher` runs it every step, with the store's numerics when there is a store.
    """
    if get_method(loss).needs_teacher and store_path is None and online_teacher is None:
        raise NeedsTeacher(loss)
    store = LogitStore.open(store_path) if store_path else None
    if store is not None:
        store.require_complete()
        data = _data_from_store(store, data)
    elif data.dataset is None:
        raise ConfigError("name a dataset: without a store there is none to take it from", setting="dataset")
    try:
        train_set, val_set, test_set = load_splits_with_val(data.dataset, root=data.root, subset=data.subset,
                                                            test_subset=data.test_subset, val_split=data.val_split)
    except DatasetError as err:
        recorded = store.attrs.get("data_root") if store is not None else None
        if recorded is None:
            raise
        raise ConfigError(f"{err} (the store was made from the data in {recorded}; name where that data is now)",
                          setting="data_root") from None
    view_seed = seed if view_seed is None else view_seed
    if store is not None:
        check_store(store, train_set, test_set, data.augment, expected_teacher)
        spec = ViewSpec.from_dict(store.attrs["views"])
    else:
        family = parse_family(data.augment) if data.augment else default_family(train_set)
        spec = None if views is None else ViewSpec.parse(views, family, view_seed)

    if epochs is None:
        epochs = spec.num_slots if spec is not None and spec.policy == "per-epoch" else DEFAULT_EPOCHS
    if spec is None:
        spec = ViewSpec(family, "per-epoch", epochs, view_seed)
    return StudentInputs(train_set, val_set, test_set, _signal(store, spec, online_teacher, device), epochs)


def _data_from_store(store: LogitStore, data: DataRequest) -> DataRequest:
    """The store's dataset, subsets and validation split, where the request left them open."""
    recorded = store.attrs["dataset"]
    root = data.root
    if root is None and store.attrs.get("data_root") and Path(store.attrs["data_root"]).exists():
        root = store.attrs["data_root"]  # the data the store was made from (its fingerprint is checked)
    return DataRequest(
        dataset=data.dataset or recorded.get("spec", recorded["name"]),
        root=root,
        subset=data.subset if data.subset is not None else recorded.get("subset"),
        test_subset=data.test_subset if data.test_subset is not None else store.attrs["eval_dataset"].get("subset"),
        val_split=data.val_split if data.val_split is not None else ValSplit.from_record(recorded.get("val_split")),
        augment=data.augment,
    )


def _signal(store: LogitStore | None, spec: ViewSpec, online_teacher: str | None, device: str) -> ViewsOnly:
    if online_teacher:
        teacher = load_teacher(online_teacher)
        if store is None:
            return OnlineSignal(teacher, spec, Numerics.resolve(resolve_device(device)), dtype="float32")
        store.check({"teacher": {"weights_sha256": teacher.weights_sha256}})
        # The store's numerics and dtype: on a CPU the online teacher then gives the stored logits bit for bit.
        return OnlineSignal(teacher, spec, store.numerics.on(resolve_device(device)), dtype=store.layout.dtype)
    return StoreSignal(store) if store is not None else ViewsOnly(spec)


def check_store(store: LogitStore, train_set: ImageSet, test_set: ImageSet, augment: str | None = None,
                expected_teacher: str | None = None) -> None:
    """Refuse a store that was made from other data, views or teacher than requested."""
    expected: dict[str, Any] = {"dataset": train_set.describe(), "eval_dataset": test_set.describe(),
                                "normalization": train_set.normalization}
    if augment:
        expected["views"] = {"family": parse_family(augment).to_dict()}
    if expected_teacher:
        expected["teacher"] = {"weights_sha256": load_teacher(expected_teacher).weights_sha256}
    store.check(expected)
    if store.layout.classes != train_set.num_classes:
        raise StoreError(f"{store.path} holds {store.layout.classes}-class logits; the student has {train_set.num_classes} classes")
