"""The report as text, for a terminal."""

from __future__ import annotations

from typing import Any

from pipeline.units import format_bytes

def _bytes(n: float | None) -> str:
    return "-" if n is None else format_bytes(n)


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}%"


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _view_spec(views: dict[str, Any]) -> str:
    if not views:
        return "-"
    family = views.get("family") or {}
    fam = family.get("kind", "?") + ":" + ",".join(f"{k}={v}" for k, v in family.items() if k != "kind")
    count = views.get("count")
    return f"{views.get('policy')}{'' if count is None else f' x{count}'} of {fam}, seed {views.get('seed')}"


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text: a screenful or two, the numbers a user checks first."""
    cached = report["cached_views"]
    sections = (
        _identity_lines(report),
        _storage_lines(report),
        _teacher_table_lines(cached, report["test_split"] or {}),
        _ensemble_lines(report.get("ensemble")),
        _mask_size_lines(cached),
        _reliability_lines(cached),
        _worst_class_lines(report["worst_classes"]),
    )
    return "\n".join(line for section in sections for line in section)


def _kv(key: str, value: str) -> str:
    return f"  {key:<16}{value}"


def _identity_lines(report: dict[str, Any]) -> list[str]:
    """Heading: whether the store is whole, and which teacher, data and views made it."""
    ps, comp, fmt = report["provenance_summary"], report["completeness"], report["format"]
    teacher, data, test_data = ps["teacher"], ps["dataset"], ps["eval_dataset"]
    subset = data["subset"] if data["subset"] is not None else "-"
    return [
        f"rld logit store {report['path']}",
        _kv("status", _status(comp, ps["completed"])),
        _kv("store id", f"{ps['store_id']}  (format {fmt.get('name')} v{fmt.get('version')})"),
        _kv("teacher", f"{teacher['arch']}  sha256 {teacher['weights_sha256']}  "
                       f"recorded {_recorded_accuracy(teacher.get('accuracy')) or '-'}"),
        _kv("dataset", f"{data['name']} {data['split']}, {data['size']} samples, {data['num_classes']} classes, "
                       f"subset {subset}, fingerprint {data['fingerprint']}"),
        _kv("test split", f"{test_data['name']} {test_data['split']}, {test_data['size']} samples, "
                          f"fingerprint {test_data['fingerprint']}"),
        _kv("views", _view_spec(ps["views"])),
        _kv("code version", str(ps["code_version"])),
        _kv("created", str(ps["created"])),
    ]


def _status(comp: dict[str, Any], completed: str | None) -> str:
    if comp["complete"]:
        return (f"complete (completed {completed})" if comp["marked_complete"]
                else "complete: every unit done, not yet marked complete by a dump")
    return (f"INCOMPLETE: {comp['missing_units']} of {comp['train_units_total'] + comp['eval_units_total']} "
            "write units missing; statistics cover done units only")


def _recorded_accuracy(accuracy: Any) -> str:
    """The teacher's accuracy as its provenance records it: a dict of percentages, or any value."""
    accuracy = accuracy or {}
    if isinstance(accuracy, dict):
        return ", ".join(f"{k} {v:.2f}%" for k, v in accuracy.items() if isinstance(v, (int, float)))
    return str(accuracy)


def _storage_lines(report: dict[str, Any]) -> list[str]:
    """Array layout, bytes on disk, which write units are done, and the view parameters."""
    arr, disk = report["array"], report["disk"]
    shards = f", shards {arr['shards']}" if arr["shards"] else ""
    largest = sorted(disk["per_array"].items(), key=lambda item: -item[1])
    largest_shown = ", ".join(f"{k} {_bytes(v)}" for k, v in largest[:5]) + (", ..." if len(largest) > 5 else "")
    lines = [
        "",
        "storage",
        _kv("logits", f"{arr['shape']} {arr['dtype']}, chunks {arr['chunks']} ({_bytes(arr['chunk_bytes'])}), "
                      f"codecs {'+'.join(arr['codecs'])}" + shards),
        _kv("on disk", f"{_bytes(disk['total_bytes'])} in {disk['files']} files; "
                       f"{_f(disk['bytes_per_view'], 1)} B per cached view "
                       f"(predicted {disk['predicted_bytes_per_view']})"),
        _kv("largest arrays", largest_shown),
        *_unit_lines(report["completeness"]),
        _kv("checksums", "every done chunk read and passed crc32c"),
    ]
    if report["view_param_means"]:
        lines.append(_kv("view params", "means " + " ".join(f"{v:.3g}" for v in report["view_param_means"])))
    return lines


def _unit_lines(comp: dict[str, Any]) -> list[str]:
    """Done write units, train then test, and the first slots still missing some."""
    slots = comp["slots"]
    partial = [s for s in slots if s["done"] < s["total"]]
    chunks_per_slot = slots[0]["total"] if slots else 0
    lines = [_kv("train units", f"{comp['train_units_done']}/{comp['train_units_total']} done "
                                f"({len(slots)} slots x {chunks_per_slot} chunks, {comp['views_done']} views)")]
    if partial:
        shown = ", ".join(f"{s['slot']} ({s['done']}/{s['total']})" for s in partial[:8])
        lines.append(_kv("unfinished", f"{len(partial)} slots: {shown}{', ...' if len(partial) > 8 else ''}"))
    lines.append(_kv("test units", f"{comp['eval_units_done']}/{comp['eval_units_total']} done"))
    return lines


def _teacher_table_lines(cached: dict[str, Any], test: dict[str, Any]) -> list[str]:
    """The teacher's numbers on the cached views and on the test split, side by side, then the sanity checks."""
    rows = [
        ("views", lambda r: str(r.get("views", "-"))),
        ("top-1", lambda r: _pct(r.get("top1_pct"))),
        ("top-5", lambda r: _pct(r.get("top5_pct"))),
        ("wrong", lambda r: _pct(r.get("wrong_pct"))),
        ("mean confidence", lambda r: _f(r.get("mean_confidence"))),
        ("ECE (15 bins)", lambda r: _pct(r.get("ece_pct"))),
        ("MCD mask mean", lambda r: _f((r.get("mask_size") or {}).get("mean"))),
        ("mask size 1", lambda r: _pct((r.get("mask_size") or {}).get("size1_pct"))),
    ]
    lines = ["", f"  {'teacher':<16}{'cached views':>14}{'test split':>14}"]
    lines += [f"  {name:<16}{get(cached):>14}{get(test) if test else '-':>14}" for name, get in rows]
    per_slot = [v for v in cached["per_slot_top1_pct"] if v is not None]
    if len(per_slot) > 1:
        lines.append(_kv("per-slot top-1", f"min {min(per_slot):.2f}%  max {max(per_slot):.2f}%"))
    if cached["nonfinite_views"] or cached["argmax_mismatches"]:
        lines.append(_kv("WARNING", f"{cached['nonfinite_views']} views with non-finite logits, "
                                    f"{cached['argmax_mismatches']} views whose stored argmax is not their top logit"))
    else:
        lines.append(_kv("checks", "all logits finite; stored argmax agrees with every view"))
    return lines


def _ensemble_lines(ens: dict[str, Any] | None) -> list[str]:
    """An ensemble store's members: top-1 and wrong share of each beside the ensemble's, then agreement."""
    if not ens:
        return []
    weights = " ".join(f"{w:.3g}" for w in ens["weights"])
    lines = ["", f"ensemble of {len(ens['members'])} stores: mean of {ens['space']}, weights {weights}",
             f"  {'':<16}{'top-1 cached':>14}{'wrong cached':>14}{'top-1 test':>12}  store"]
    rows = [("ensemble", ens, "this store")] + [(m["name"], m, f"{m['store']} ({m['store_id']})") for m in ens["members"]]
    for name, r, where in rows:
        if r.get("problem"):
            lines.append(f"  {name:<16}{'-':>14}{'-':>14}{'-':>12}  {where}: {r['problem']}")
            continue
        cached, test = r["cached_views"], r["test_split"]
        lines.append(f"  {name:<16}{_pct(cached['top1_pct']):>14}{_pct(cached['wrong_pct']):>14}"
                     f"{_pct(test['top1_pct']):>12}  {where}")
    agreement = ens["agreement"]
    if agreement["members_found"] > 1:
        lines.append(_kv("all members", f"agree on {_pct(agreement['all_members_cached_views_pct'])} of cached views, "
                                        f"{_pct(agreement['all_members_test_split_pct'])} of the test split"))
    for pair in agreement["pairs"]:
        lines.append(_kv("agreement", f"{pair['a']} / {pair['b']}: {_pct(pair['cached_views_pct'])} cached, "
                                      f"{_pct(pair['test_split_pct'])} test"))
    return lines


def _mask_size_lines(cached: dict[str, Any]) -> list[str]:
    """How many views have an MCD mask of each size (grouped rows past 5); nothing when no view counted."""
    if not cached["views"]:
        return []
    lines = ["", "MCD mask size on cached views (classes c with t_c >= t_y)",
             f"  {'size':>8}{'views':>12}{'share':>10}"]
    for label, count in _size_rows(cached["mask_size"]["counts"]):
        lines.append(f"  {label:>8}{count:>12}{_pct(100.0 * count / cached['views']):>10}")
    return lines


def _reliability_lines(cached: dict[str, Any]) -> list[str]:
    """Accuracy against mean confidence per non-empty ECE bin; nothing when no view counted."""
    if not cached["views"]:
        return []
    lines = ["", "reliability on cached views (non-empty bins)",
             f"  {'confidence':>12}{'views':>10}{'accuracy':>10}{'mean conf':>11}"]
    for b in cached["reliability"]:
        if b["views"]:
            lines.append(f"  {b['low']:.3f}-{b['high']:.3f} {b['views']:>9}"
                         f"{_f(b['accuracy']):>10}{_f(b['confidence']):>11}")
    return lines


def _worst_class_lines(worst: list[dict[str, Any]]) -> list[str]:
    """The classes with the highest teacher error rate; nothing when no class has an error."""
    if not worst:
        return []
    width = max(5, *(len(w["name"]) for w in worst))
    lines = ["", "classes the teacher gets wrong most (cached views)",
             f"  {'class':>6}  {'name':<{width}}{'error':>9}{'wrong':>9}{'views':>9}"]
    for w in worst:
        lines.append(f"  {w['class']:>6}  {w['name']:<{width}}{_pct(w['error_pct'], 1):>9}"
                     f"{w['errors']:>9}{w['views']:>9}")
    return lines


def _size_rows(counts: list[int]) -> list[tuple[str, int]]:
    """Sizes 1-5 one by one, then 6-10, 11-20, 21-50, 51-100, ... up to the last non-empty row."""
    rows = [(str(k + 1), counts[k]) for k in range(min(5, len(counts)))]
    lo, step = 6, 0
    while lo <= len(counts):
        hi = min((10, 20, 50)[step % 3] * 10 ** (step // 3), len(counts))
        rows.append((f"{lo}-{hi}" if hi > lo else str(lo), sum(counts[lo - 1:hi])))
        lo, step = hi + 1, step + 1
    last = max((i for i, (_, c) in enumerate(rows) if c), default=0)
    return rows[: max(last + 1, 1)]
