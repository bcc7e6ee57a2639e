"""Compare finished students: tables (Markdown + CSV) and figures.

Three comparisons, each only between runs it is fair to compare:
- **Seeds**: runs that differ only in their seed (same store/views, data, recipe, loss and
  options) form a group, reported as mean ± std.
- **Paired against CE**: a distilled student and the CE student of the same seed and the
  same setting (architecture, views, data, recipe) share initialisation, data order and
  views, so their difference isolates the loss; reported per seed and as mean ± std with the
  number of seeds where it is positive.
- **Chosen on validation**: where a loss was run with several option sets (a grid, e.g.
  beta), the set with the best mean final *validation* top-1 is chosen, and its test
  numbers are reported. The test split never takes part in a choice.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any, Sequence

from pipeline.methods import REGISTRY

# Each method's loss terms in the last epoch (train mean), one column per term of any method.
TERM_COLUMNS = tuple(dict.fromkeys(["loss_ce", *(f"loss_{t}" for m in REGISTRY.values() for t in m.terms), "loss_total"]))
COLUMNS = ("name", "teacher", "teacher_top1", "arch", "loss", "options", "views", "seed", "epochs", "val_top1", "final_top1",
           "final_top5", "delta_vs_ce", "best_epoch", "best_val_top1", "best_top1", "teacher_agreement",
           "teacher_rank_corr", "images_per_s", *TERM_COLUMNS)
GROUP_COLUMNS = ("teacher", "teacher_top1", "arch", "loss", "options", "views", "epochs", "runs", "seeds", "val_top1",
                 "val_top1_std", "final_top1", "final_top1_std", "delta_vs_ce", "delta_vs_ce_std", "delta_positive",
                 "pairs", "teacher_agreement", "teacher_rank_corr", "chosen")
# Recipe fields that change what a run computes (device, workers, batch size of evaluation do not).
RECIPE_FIELDS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "lr_decay", "amp", "channels_last")


def load_run(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{folder}: no summary.json (the student has not finished)")
    summary = json.loads(summary_path.read_text())
    summary["history"] = json.loads((folder / "metrics.json").read_text())
    summary["folder"] = str(folder)
    return summary


def setting(run: dict[str, Any]) -> str:
    """What two runs must share to be compared: architecture, views, data and recipe."""
    config = run.get("config", {})
    key = {
        "arch": run["arch"],
        "views": run["signal"].get("views"),
        "data": [(run.get(k) or {}).get("fingerprint") for k in ("dataset", "val_dataset", "test_dataset")],
        "recipe": {f: config.get(f, run.get(f)) for f in RECIPE_FIELDS},
    }
    return json.dumps(key, sort_keys=True)


def _teacher_name(run: dict[str, Any]) -> str:
    """The teacher as the workflow names it (the stem of teachers/NAME.pt; an ensemble's store
    name), else its architecture."""
    teacher = run["signal"].get("teacher") or {}
    if teacher.get("ensemble") and teacher.get("name"):
        return teacher["name"]
    return Path(teacher["file"]).stem if teacher.get("file") else teacher.get("arch", "-")


def _tell_teachers_apart(rows: Sequence[dict[str, Any]]) -> None:
    """Two teachers sharing a name (the same file name in two folders) get their weights' sha too."""
    weights: dict[str, set] = {}
    for r in rows:
        weights.setdefault(r["teacher"], set()).add(r["_teacher_weights"])
    for r in rows:
        if len(weights[r["teacher"]]) > 1 and r["_teacher_weights"]:
            r["teacher"] = f"{r['teacher']}@{r['_teacher_weights'][:8]}"


def _shown_options(run: dict[str, Any]) -> dict[str, str]:
    """The loss options as the tables print them: on/off options only when on, and choices
    (RLD's mask) only when not the default, so runs from before an option existed read alike."""
    method = REGISTRY.get(run["loss"])
    shown = {}
    for key, value in run["loss_options"].items():
        option = method.option(key) if method is not None and key in method.defaults else None
        if isinstance(value, bool) and not value:
            continue
        if option is not None and option.kind == "choice" and value == option.default:
            continue
        shown[key] = f"{value:g}" if isinstance(value, float) else str(value)
    return shown


def _views(run: dict[str, Any]) -> str:
    """The student's views as a store names them: 'per-epoch:20', 'pool:5', 'exhaustive'."""
    views = run["signal"].get("views") or {}
    policy = views.get("policy", "-")
    return f"{policy}:{views['count']}" if views.get("count") else policy


def row(run: dict[str, Any]) -> dict[str, Any]:
    """The table row of one run (keys starting with '_' are for grouping, not shown)."""
    teacher = run["signal"].get("teacher") or {}
    best = run.get("best") or {}
    shown = _shown_options(run)
    options = " ".join(f"{k}={v}" for k, v in shown.items())
    where = setting(run)
    distilled_from = None if run["loss"] == "ce" else teacher.get("weights_sha256")  # CE ignores its store's teacher
    return {
        "name": run["name"],
        "_folder": run["folder"],
        "teacher": _teacher_name(run),
        "teacher_top1": run.get("teacher_test", {}).get("top1"),
        "arch": run["arch"],
        "loss": run["loss"],
        "options": options,
        "views": _views(run),
        "seed": run["seed"],
        "epochs": run["epochs"],
        "val_top1": run["final"].get("val_top1"),
        "final_top1": run["final"]["top1"],
        "final_top5": run["final"]["top5"],
        "delta_vs_ce": None,
        "best_epoch": best.get("epoch"),
        "best_val_top1": best.get("val_top1"),
        "best_top1": best.get("top1"),
        "teacher_agreement": run["final"].get("teacher_agreement"),
        "teacher_rank_corr": run["final"].get("teacher_rank_corr"),
        "images_per_s": run["images_per_s"],
        **{column: (run["history"][-1] if run["history"] else {}).get(column) for column in TERM_COLUMNS},
        "_setting": where,
        "_teacher_weights": teacher.get("weights_sha256"),
        "_family": (where, distilled_from, run["loss"]),
        "_group": (where, distilled_from, run["loss"], options),
        "_options": shown,
    }


def pair_with_ce(rows: Sequence[dict[str, Any]]) -> None:
    """Fill `delta_vs_ce`: final test top-1 minus that of the CE run of the same setting and seed."""
    ce = {(r["_setting"], r["seed"]): r for r in rows if r["loss"] == "ce"}
    for r in rows:
        partner = ce.get((r["_setting"], r["seed"]))
        if r["loss"] != "ce" and partner is not None:
            r["delta_vs_ce"] = r["final_top1"] - partner["final_top1"]


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std; no std for a single value (one seed says nothing of the spread)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def groups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per group of runs that differ only in their seed, with means and stds."""
    buckets: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        buckets.setdefault(r["_group"], []).append(r)
    out = []
    for members in buckets.values():
        g = {c: members[0][c] for c in ("teacher", "teacher_top1", "arch", "loss", "options", "views", "epochs", "_family",
                                        "_options")}
        g["runs"] = len(members)
        g["members"] = [m["_folder"] for m in members]
        g["seeds"] = ",".join(str(m["seed"]) for m in members)
        for metric in ("val_top1", "final_top1", "final_top5", "teacher_agreement", "teacher_rank_corr", "delta_vs_ce"):
            g[metric], g[f"{metric}_std"] = _mean_std([m[metric] for m in members if m[metric] is not None])
        deltas = [m["delta_vs_ce"] for m in members if m["delta_vs_ce"] is not None]
        g["pairs"], g["delta_positive"] = len(deltas), sum(d > 0 for d in deltas)
        g["deltas"] = deltas
        g["_top1_by_seed"] = {m["seed"]: m["final_top1"] for m in members}
        g["chosen"] = g["passed_over"] = False
        out.append(g)
    choose_on_validation(out)
    _label_by_what_varies(out)
    return out


def _by_family(grouped: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Groups that differ only in their loss options: one loss of one setting and teacher."""
    families: dict[tuple, list[dict[str, Any]]] = {}
    for g in grouped:
        families.setdefault(g["_family"], []).append(g)
    return list(families.values())


def _label_by_what_varies(grouped: Sequence[dict[str, Any]]) -> None:
    """`label`: the loss plus the options that differ among the groups of its family (e.g. 'rld beta=2'),
    the views where the report holds students of several ('rld pool:5'), and the teacher where
    students of several teachers distil ('rld <- resnet20-8k'; CE has none)."""
    several_views = len({g["views"] for g in grouped}) > 1
    several_teachers = len({g["teacher"] for g in grouped if g["loss"] != "ce"}) > 1
    for members in _by_family(grouped):
        options = [m["_options"] for m in members]
        varying = sorted({k for o in options for k in o if len({p.get(k) for p in options}) > 1})
        for m in members:
            m["label"] = " ".join([m["loss"], *(f"{k}={m['_options'].get(k, '-')}" for k in varying),
                                   *([m["views"]] if several_views else []),
                                   *([f"<- {m['teacher']}"] if several_teachers and m["loss"] != "ce" else [])])


def choose_on_validation(grouped: Sequence[dict[str, Any]]) -> None:
    """Mark, per (setting, teacher, loss), the option set with the best mean final validation
    top-1 `chosen` and the others `passed_over`.

    Only families with more than one option set and validation numbers for all of them choose.
    """
    for members in _by_family(grouped):
        if len(members) > 1 and all(m["val_top1"] is not None for m in members):
            best = max(members, key=lambda m: m["val_top1"])
            for m in members:
                m["chosen"], m["passed_over"] = m is best, m is not best


def pair_with_loss(grouped: Sequence[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """Each group of another loss against `base` (e.g. RLD against DKD): per seed, test top-1 minus
    that of the `base` student of the same seed, setting and teacher. Where `base` was run with
    several option sets, the one chosen on validation is the partner; option sets passed over
    on validation are left out, like in the table of one setting per loss."""
    partners = {}
    for members in _by_family(grouped):
        if members[0]["loss"] == base:
            picked = [m for m in members if m["chosen"]] if len(members) > 1 else members
            if picked:
                partners[members[0]["_family"][:2]] = picked[0]
    compared = []
    for g in grouped:
        setting, teacher = g["_family"][:2]
        partner = partners.get((setting, None if base == "ce" else teacher))  # CE has no teacher
        if g["loss"] == base or g["passed_over"] or partner is None:
            continue
        seeds = sorted(set(g["_top1_by_seed"]) & set(partner["_top1_by_seed"]))
        deltas = [g["_top1_by_seed"][s] - partner["_top1_by_seed"][s] for s in seeds]
        if deltas:
            mean, std = _mean_std(deltas)
            compared.append({**g, "versus": base, "versus_options": partner["options"], "paired_seeds": seeds,
                             "delta": mean, "delta_std": std, "delta_positive": sum(d > 0 for d in deltas),
                             "pairs": len(deltas)})
    return compared


def _fmt(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def _pm(mean: float | None, std: float | None, signed: bool = False, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return _fmt(mean, digits, signed=signed) + ("" if std is None else f" ± {_fmt(std, digits)}")


def _positive(g: dict[str, Any]) -> str:
    return f"{g['delta_positive']}/{g['pairs']}" if g["pairs"] else "-"


def markdown(rows: Sequence[dict[str, Any]], grouped: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]],
             versus: Sequence[str] = ()) -> str:
    sizes = sorted({(r["test_dataset"] or {}).get("size") for r in runs if r.get("test_dataset")} - {None})
    val_sizes = sorted({(r.get("val_dataset") or {}).get("size") for r in runs} - {None})
    lines = ["# Students", "",
             f"Test top-1/top-5 (%) of the final weights on the un-augmented test split "
             f"({' / '.join(f'{s:,}' for s in sizes) or '?'} images)"
             + (f"; val = final top-1 on the validation split held out of the training split "
                f"({' / '.join(f'{s:,}' for s in val_sizes)} images)" if val_sizes else "")
             + ". Δ CE = test top-1 minus that of the CE student of the same seed and setting (same "
               "initialisation, data order and views). best = the epoch with the best validation top-1, "
               "and its test top-1. agreement = % of test images where the student's top-1 equals the teacher's; "
               "rank corr = Spearman correlation of the student's and the teacher's logits over the classes other "
               "than the label, mean over test images (how much of the teacher's ranking of the wrong classes the "
               "student keeps).",
             ""]
    lines.append("| student | teacher (top-1) | arch | loss | options | views | seed | epochs | val top-1 | test top-1 "
                 "| test top-5 | Δ CE | best epoch: val → test | agreement | rank corr | img/s |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = f"{r['best_epoch']}: {_fmt(r['best_val_top1'])} → {_fmt(r['best_top1'])}" if r["best_epoch"] else "-"
        lines.append(
            f"| {r['name']} | {r['teacher']} ({_fmt(r['teacher_top1'])}) | {r['arch']} | {r['loss']} | {r['options']} | "
            f"{r['views']} | {r['seed']} | {r['epochs']} | {_fmt(r['val_top1'])} | {_fmt(r['final_top1'])} | {_fmt(r['final_top5'])} | "
            f"{_fmt(r['delta_vs_ce'], signed=True)} | {best} | {_fmt(r['teacher_agreement'])} | "
            f"{_fmt(r['teacher_rank_corr'], 3)} | {_fmt(r['images_per_s'], 0)} |"
        )
    if any(g["runs"] > 1 or g["pairs"] for g in grouped):
        lines += ["", "## Mean ± std over seeds, and the paired difference to CE", "",
                  "Δ CE > 0 counts the seeds where the student beats the CE student of its seed. "
                  "✓ marks the option set chosen on validation top-1 among those run for that loss.", "",
                  "| teacher | arch | loss | options | views | seeds | val top-1 | test top-1 | Δ CE (paired) | Δ CE > 0 "
                  "| agreement | rank corr |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for g in grouped:
            mark = " ✓" if g["chosen"] else ""
            lines.append(
                f"| {g['teacher']} | {g['arch']} | {g['loss']} | {g['options']}{mark} | {g['views']} | {g['seeds']} | "
                f"{_pm(g['val_top1'], g['val_top1_std'])} | {_pm(g['final_top1'], g['final_top1_std'])} | "
                f"{_pm(g['delta_vs_ce'], g['delta_vs_ce_std'], signed=True)} | "
                f"{_positive(g)} | {_pm(g['teacher_agreement'], g['teacher_agreement_std'])} | "
                f"{_pm(g['teacher_rank_corr'], g['teacher_rank_corr_std'], digits=3)} |"
            )
    # One row per loss: the chosen option set, or the only one that was run.
    chosen = [g for members in _by_family(grouped) for g in members if g["chosen"] or len(members) == 1]
    if any(g["chosen"] for g in grouped):
        lines += ["", "## One setting per loss, chosen on validation", "",
                  "| teacher | arch | loss | options | views | seeds | val top-1 | test top-1 | Δ CE (paired) | Δ CE > 0 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for g in chosen:
            lines.append(
                f"| {g['teacher']} | {g['arch']} | {g['loss']} | {g['options']} | {g['views']} | {g['seeds']} | "
                f"{_pm(g['val_top1'], g['val_top1_std'])} | {_pm(g['final_top1'], g['final_top1_std'])} | "
                f"{_pm(g['delta_vs_ce'], g['delta_vs_ce_std'], signed=True)} | {_positive(g)} |"
            )
    for base in versus:
        compared = pair_with_loss(grouped, base)
        lines += ["", f"## Paired against {base.upper()}", "",
                  f"Δ {base.upper()} = test top-1 minus that of the {base.upper()} student of the same seed, setting "
                  f"and teacher (its options: the set chosen on validation, or the only one run).", ""]
        if not compared:
            lines.append(f"No student has a {base.upper()} partner of the same setting, teacher and seed.")
            continue
        lines += [f"| teacher | arch | loss | options | views | paired seeds | {base.upper()} options "
                  f"| Δ {base.upper()} (paired) | Δ > 0 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in compared:
            lines.append(
                f"| {c['teacher']} | {c['arch']} | {c['loss']} | {c['options']} | {c['views']} | "
                f"{','.join(map(str, c['paired_seeds']))} | {c['versus_options']} | "
                f"{_pm(c['delta'], c['delta_std'], signed=True)} | {c['delta_positive']}/{c['pairs']} |"
            )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_report(student_dirs: Sequence[str | Path], out_dir: str | Path, versus: Sequence[str] = ()) -> dict[str, Path]:
    """summary.md, summary.csv (one row per student), groups.csv (one row per seed group),
    accuracy.png (curves) and paired.png (differences to CE). `versus`: losses (e.g. dkd) that
    summary.md also pairs every other loss against, seed by seed (`pair_with_loss`)."""
    from pipeline.plots import plot_paired_differences, plot_student_comparison

    runs = [load_run(d) for d in student_dirs]
    if not runs:
        raise ValueError("no students to report")
    rows = [row(r) for r in runs]
    _tell_teachers_apart(rows)
    rows.sort(key=lambda r: (r["teacher"], r["arch"], r["loss"], r["options"], r["seed"], r["name"]))
    pair_with_ce(rows)
    grouped = groups(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "summary.md", "csv": out / "summary.csv", "groups": out / "groups.csv",
             "plot": out / "accuracy.png", "paired": out / "paired.png"}
    paths["markdown"].write_text(markdown(rows, grouped, runs, versus))
    _write_csv(paths["csv"], COLUMNS, rows)
    _write_csv(paths["groups"], GROUP_COLUMNS, grouped)
    plot_student_comparison(runs, grouped, paths["plot"])
    plot_paired_differences(grouped, paths["paired"])
    return paths
