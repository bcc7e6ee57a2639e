"""What runs when: teacher -> logit store (in shards) -> students -> report.

Every rule calls one `rld` stage command and holds no algorithm. Outputs that stand for
expensive, resumable work are small markers, never the work itself: Snakemake deletes a
failed job's outputs, and a killed dump or student must keep what it finished.

    snakemake --cores 8 students/resnet8x4            # one student and what it needs
    snakemake --cores 8                               # every student and the report
    snakemake --cores 8 --configfile config/cifar100.yaml
"""

import difflib
import shlex
import sys

import yaml
from snakemake.utils import min_version, validate

from pipeline.config import check_config, check_stores
from pipeline.grid import expand_students
from pipeline.methods import get_method

min_version("8.20")


# A preset given with --configfile replaces the demo config instead of extending it (by
# default Snakemake merges the two, which would add the demo's students to every preset).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# One line for a config's first problem, with the closest key for a misspelt one (Snakemake's
# own report is a warning, that line and the whole schema); then Snakemake's validate fills in
# the schema's defaults.
try:
    with open(workflow.source_path("config/schema.yaml")) as schema:
        check_config(config, yaml.safe_load(schema))
except ValueError as err:
    sys.exit(f"config: {err}")
validate(config, "config/schema.yaml")

# The interpreter running Snakemake, so rules use this environment even when it is not
# activated (a bare `rld` would resolve against whatever PATH the shell has).
RLD = f"{shlex.quote(sys.executable)} -m stages.cli"
# Commands pass the recipe fields a config sets; the rest are the library's (the paper's,
# pipeline/recipe.py), milestones and warm-up scaled to the run's epochs.

# A student entry with lists (loss: [ce, kd], seed: [0, 1, 2], loss_options: {beta: [2, 4]})
# is a grid of named students (pipeline/grid.py): students/<entry>-<loss>-beta<b>-s<seed>.
try:
    STUDENTS = expand_students(config["students"])
except ValueError as err:
    sys.exit(f"config: {err}")
TEACHERS, STORES = config["teachers"], config.get("stores", {})
REPORT = config.get("report_dir", "reports")
# Students are named by their config entry, so two configs can both have a resnet8x4-ce-s0
# trained on different data; each preset keeps its students in a folder of its own, or
# running one would retrain (and so delete) the other's students of the same name.
STUDENTS_DIR = config.get("students_dir", "students")


def per_job(key, default):
    """A config value given as one number for every job, or one per kind of job."""
    value = config.get(key, default)
    return {job: value.get(job, default) if isinstance(value, dict) else value for job in ("teacher", "dump", "student")}


THREADS = per_job("threads", 2)
GPUS = config.get("gpus_per_job", 0)
# Memory per job in MB, like threads: one number or one per kind of job. The defaults fit a
# CIFAR-size GPU job (CUDA context, the data set, an epoch of cached logits and the next one
# prefetched); ImageNet-size stores and image folders need more (see config/imagenet.yaml).
MEM_MB = per_job("mem_mb", 8000)
# Snakemake's local executor does not say which GPU a job may use, so GPU jobs run under
# `rld on-gpus`: it waits for a free slot on GPUS devices of their own (jobs_per_gpu slots
# per device) and sets CUDA_VISIBLE_DEVICES; a slot is freed when its job ends, however.
# Teachers and dump shards are one process on one GPU; a student with several GPUs trains
# with DDP, one torchrun rank per GPU.
ONE_GPU = min(GPUS, 1)


def on_gpus(count):
    return f"{RLD} on-gpus --gpus {count} --jobs-per-gpu {config.get('jobs_per_gpu', 1)} -- " if count else ""


ON_ONE_GPU = on_gpus(ONE_GPU)
TRAIN_STUDENT = on_gpus(GPUS) + (
    f"{shlex.quote(sys.executable)} -m torch.distributed.run --standalone --nproc-per-node {GPUS} -m stages.cli"
    if GPUS > 1 else RLD
)


def named(table, kind, name):
    """The config entry of a target's name: a typo in `snakemake students/NAME` gets the config's
    names and the closest ones, not a KeyError from inside a rule."""
    if name not in table:
        names = sorted(table)
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"no {kind} {name!r} in this config (its {kind}s: {shown or 'none'}){hint}")
    return table[name]


def check_references():
    check_stores(STORES, TEACHERS)
    for name, student in STUDENTS.items():
        store = student.get("store")
        if store is not None and store not in STORES:
            raise ValueError(f"config: students.{name}.store {store!r} is not one of stores: {sorted(STORES)}")
        if store is None and get_method(student["loss"]).needs_teacher:
            raise ValueError(f"config: students.{name} uses loss {student['loss']!r}, which needs a store")


try:
    check_references()
except ValueError as err:
    sys.exit(str(err))


wildcard_constraints:
    teacher="[A-Za-z0-9_.-]+",
    store="[A-Za-z0-9_.-]+",
    name="[A-Za-z0-9_.-]+",
    shard="[0-9]+",
    shards="[0-9]+",


def q(value):
    return shlex.quote(str(value))


def dataset_args(**overrides):
    settings = {**config, **overrides}
    args = [f"--dataset {q(config['dataset'])}", f"--data-root {q(config.get('data_root', 'data'))}"]
    for key, flag in (("subset", "--subset"), ("test_subset", "--test-subset"), ("val_split", "--val-split"),
                      ("val_seed", "--val-seed"), ("augment", "--augment")):
        if settings.get(key) is not None and (key != "val_seed" or settings.get("val_split") is not None):
            args.append(f"{flag} {q(settings[key])}")
    return " ".join(args)


def runtime_args(amp=None):
    return f"--device {q(config.get('device', 'auto'))} --amp {q(amp or config.get('amp', 'auto'))}"


def recipe_args(own):
    recipe = {**config.get("recipe", {}), **(own or {})}
    args = []
    for key, value in recipe.items():
        flag = "--" + key.replace("_", "-")
        if key == "milestones":
            args.append(f"{flag} {q(','.join(map(str, value)))}")
        elif isinstance(value, bool):
            args.append(flag if value else "")
        else:
            args.append(f"{flag} {q(value)}")  # `init` is a path
    return " ".join(a for a in args if a)


def teacher_command(wildcards):
    t = named(TEACHERS, "teacher", wildcards.teacher)
    if t.get("weights"):
        return f"teacher import --arch {q(t['arch'])} --weights {q(t['weights'])} {dataset_args()} {runtime_args()}"
    data = dataset_args(**({"subset": t["subset"]} if "subset" in t else {}))
    return f"teacher train --arch {q(t['arch'])} --seed {t.get('seed', 0)} {data} {recipe_args(t.get('recipe'))} {runtime_args()}"


def store_shards(store):
    """The markers of the jobs that fill a store: its dump shards, or the one ensemble job."""
    if "ensemble" in named(STORES, "store", store):
        return [f"cache/logits/{store}.shards/ensemble.done"]
    n = STORES[store].get("shards", 1)
    return [f"cache/logits/{store}.shards/{i}-of-{n}.done" for i in range(n)]


def dump_args(wildcards):
    s = STORES[wildcards.store]
    args = f"--views {q(s['views'])} --view-seed {s.get('seed', 0)} --dtype {s.get('dtype', 'float16')}"
    if s.get("batch_size"):
        args += f" --batch-size {s['batch_size']}"
    if s.get("max_gb") is not None:
        args += f" --max-gb {s['max_gb']}"
    return f"{dataset_args()} {args} {runtime_args()}"


def ensemble_args(wildcards):
    s = STORES[wildcards.store]
    members = " ".join(f"cache/logits/{m}.zarr" for m in s["ensemble"])
    args = f"{members} --space {s.get('space', 'logits')} --dtype {s.get('dtype', 'float16')}"
    if s.get("weights") is not None:
        args += f" --weights {','.join(map(str, s['weights']))}"
    return args


def student_inputs(wildcards):
    store = named(STUDENTS, "student", wildcards.name).get("store")
    return [f"cache/logits/{store}.json"] if store else []


def student_args(wildcards):
    s = STUDENTS[wildcards.name]
    args = [f"--arch {q(s['arch'])} --loss {s['loss']} --seed {s.get('seed', 0)}", recipe_args(s.get("recipe")),
            runtime_args(s.get("amp"))]
    if config.get("compile"):
        args.append("--cuda-graph")
    for key, value in (s.get("loss_options") or {}).items():
        flag = key.replace("_", "-")
        args.append(f"--{flag}" if value is True else f"--no-{flag}" if value is False else f"--{flag} {value}")
    if s.get("store"):  # the store names its dataset (and validation split); only where the data lives is local
        args.append(f"--store cache/logits/{s['store']}.zarr --data-root {q(config.get('data_root', 'data'))}")
    else:
        args.append(dataset_args())
    return " ".join(args)


# What each job asks a cluster for. Snakemake's SLURM executor plugin submits `threads` as
# --cpus-per-task (unless `cpus_per_task` is set), `mem_mb` as --mem, `gpu` as --gpus and
# `nodes` as --nodes; a local run only counts them against --cores/--resources. Partitions and
# wall times belong to the site and live in the profile (profiles/slurm/config.yaml).


rule all:
    input:
        expand(f"{STUDENTS_DIR}/{{name}}", name=STUDENTS),
        f"{REPORT}/summary.md",


rule teacher:
    """Train a teacher with cross-entropy (resumable in teachers/NAME.run/), or import weights."""
    output:
        "teachers/{teacher}.pt",
    log:
        "logs/teacher/{teacher}.log",
    benchmark:
        "benchmarks/teacher/{teacher}.tsv"
    params:
        cmd=teacher_command,
    threads: THREADS["teacher"]
    resources:
        gpu=ONE_GPU,
        mem_mb=MEM_MB["teacher"],
    shell:
        "OMP_NUM_THREADS={threads} {ON_ONE_GPU}{RLD} {params.cmd} --threads {threads} --out {output} > {log} 2>&1"


rule dump_shard:
    """One shard of a store. The marker, not the store, is the output: a failed or killed
    shard keeps its finished write units, and the rerun computes only the rest."""
    input:
        teacher=lambda wc: f"teachers/{named(STORES, 'store', wc.store)['teacher']}.pt",
    output:
        touch("cache/logits/{store}.shards/{shard}-of-{shards}.done"),
    log:
        "logs/dump/{store}.{shard}-of-{shards}.log",
    benchmark:
        "benchmarks/dump/{store}.{shard}-of-{shards}.tsv"
    params:
        args=dump_args,
    threads: THREADS["dump"]
    resources:
        gpu=ONE_GPU,
        mem_mb=MEM_MB["dump"],
    shell:
        "OMP_NUM_THREADS={threads} {ON_ONE_GPU}{RLD} dump --teacher {input.teacher} {params.args} --threads {threads} "
        "--shard {wildcards.shard}/{wildcards.shards} --quiet --store cache/logits/{wildcards.store}.zarr > {log} 2>&1"


rule ensemble_store:
    """A store whose logits combine its members' view by view: no teacher runs. The marker is
    the output, as for a dump: a killed job keeps its finished units and the rerun completes."""
    input:
        lambda wc: [f"cache/logits/{m}.json" for m in named(STORES, "store", wc.store)["ensemble"]],
    output:
        touch("cache/logits/{store}.shards/ensemble.done"),
    log:
        "logs/dump/{store}.ensemble.log",
    benchmark:
        "benchmarks/dump/{store}.ensemble.tsv"
    params:
        args=ensemble_args,
    resources:
        mem_mb=MEM_MB["dump"],
    shell:
        "{RLD} ensemble {params.args} --quiet --store cache/logits/{wildcards.store}.zarr > {log} 2>&1"


rule store_manifest:
    """The store is complete when every shard is: record its inspection as the manifest."""
    input:
        lambda wc: store_shards(wc.store),
    output:
        "cache/logits/{store}.json",
    log:
        "logs/dump/{store}.manifest.log",
    resources:
        mem_mb=4000,  # one bounded-memory dask pass over the store, 1 core
    shell:
        "{RLD} inspect --store cache/logits/{wildcards.store}.zarr --json --require-complete > {output} 2> {log}"


rule student:
    """Train in STUDENTS_DIR/.work/NAME (checkpoints survive a failed job), then move into place.
    A checkpoint left there by an older config of NAME is stale: Snakemake reruns the job
    because the config changed, so the student starts over (--restart-stale)."""
    input:
        student_inputs,
    output:
        directory(f"{STUDENTS_DIR}/{{name}}"),
    log:
        f"logs/{STUDENTS_DIR}/{{name}}.log",
    benchmark:
        f"benchmarks/{STUDENTS_DIR}/{{name}}.tsv"
    params:
        args=student_args,
        work=f"{STUDENTS_DIR}/.work/{{name}}",
    threads: THREADS["student"]
    resources:
        # One torchrun rank per GPU, each with `threads` intra-op threads, all on one node
        # (torchrun --standalone).
        gpu=GPUS,
        cpus_per_task=THREADS["student"] * max(GPUS, 1),
        nodes=1,
        mem_mb=MEM_MB["student"] * max(GPUS, 1),
    shell:
        "OMP_NUM_THREADS={threads} {TRAIN_STUDENT} student train {params.args} --threads {threads} --restart-stale --quiet "
        "--out {params.work} > {log} 2>&1 "
        "&& mv {params.work} {output}"


rule report:
    input:
        expand(f"{STUDENTS_DIR}/{{name}}", name=STUDENTS),
    output:
        f"{REPORT}/summary.md",
        f"{REPORT}/summary.csv",
        f"{REPORT}/groups.csv",
        f"{REPORT}/accuracy.png",
        f"{REPORT}/paired.png",
    log:
        f"logs/report/{REPORT.replace('/', '_')}.log",
    resources:
        mem_mb=2000,  # tables and plots from the students' metrics files, 1 core
    params:
        out=REPORT,
        versus="".join(f" --versus {loss}" for loss in config.get("report_versus", [])),
    shell:
        "{RLD} report {input} --out {params.out}{params.versus} > {log} 2>&1"
