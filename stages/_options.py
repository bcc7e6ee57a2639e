"""Click options shared by several stages: one name per concept across commands.

    --store PATH      a logit store (written by dump; read by inspect, verify, student train)
    --teacher FILE    the teacher to run (dump, verify, student train --teacher: online)
    --seed N          the training seed (teacher train, student train)
    --view-seed N     the seed the views are drawn from (dump; student train without a store)
    --out PATH        what a command makes: a teacher file, a student folder, a report folder
    --cuda-graph      replay the training step as a CUDA graph

Old spellings keep working for one release as hidden aliases that print a deprecation line
(`renamed`). This module and every stage module import no torch at start, so `--help`
answers at once; the stages import the library inside their commands.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from pipeline.methods import REGISTRY, option_meanings, option_names
from pipeline.recipe import default
from pipeline.runtime import AMP_CHOICES

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class ShownDefault(click.Option):
    """An option left unset (None, so that a config's or the library's default applies) whose
    help shows that default as given: click puts a text default in parentheses."""

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str) and "default" in extra:
            extra["default"] = self.show_default
        return extra


class InPipelineOrder(click.Group):
    """Lists its commands in the order they were added (click sorts them by name)."""

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return list(self.commands)


def _stack(*decorators: Decorator) -> Decorator:
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


# What a stage turns into one line for the user: the library's errors (pipeline.errors) are
# all of these kinds, and so are bad paths and a full disk.
USER_ERRORS = (ValueError, RuntimeError, OSError)

# The library's settings, as the CLI spells them (for errors that name a setting).
FLAGS = {"loss": "--loss", "dataset": "--dataset", "data_root": "--data-root", "backbone_lr_scale": "--backbone-lr-scale",
         "amp": "--amp", "cuda_graph": "--cuda-graph", "store": "--store",
         "teacher": "--teacher", "epochs": "--epochs", "milestones": "--milestones", "warmup": "--warmup"}


def fail(err: Exception) -> click.ClickException:
    """One line for the user instead of a traceback, in the CLI's words where the library's
    error names a setting or a remedy."""
    from pipeline.errors import ConfigError, NeedsTeacher, RunExists, TeacherFileError

    message = " ".join(str(err).split())
    if isinstance(err, NeedsTeacher):
        message = f"--loss {err.method} needs a teacher: --store STORE, or --teacher FILE to run it every step"
    elif isinstance(err, ConfigError) and err.setting in FLAGS:
        message = f"{FLAGS[err.setting]}: {message}"
    elif isinstance(err, RunExists):
        message += "; pass --force to start over"
    elif isinstance(err, TeacherFileError):
        message += {"make": " (`rld teacher train` or `rld teacher import`)",
                    "import": " (`rld teacher import`)",
                    "reimport": f" (`rld teacher import --arch {err.arch} --weights FILE --dataset ... --out NEW.pt`)",
                    }[err.remedy]
    return click.ClickException(message)


def renamed(old: str, new: str, dest: str, *, required: bool = False, **option: Any) -> Decorator:
    """Keep `old` working as a hidden alias of `new` (which fills `dest`) for one release.

    Using it prints a deprecation line; giving both is an error. `required`: the command
    needs `new` or `old` (`new` itself must then be declared without click's required=True).
    """

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        alias = f"renamed_{dest}"

        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(alias)
            if _given(value):
                if _given(kwargs.get(dest)):
                    raise click.UsageError(f"{old} is the old name of {new}: give {new} only")
                click.echo(f"rld: {old} is deprecated and will be removed in the next release; use {new}", err=True)
                kwargs[dest] = value
            if required and kwargs.get(dest) is None:
                raise click.UsageError(f"Missing option '{new}'.")
            return f(*args, **kwargs)

        return click.option(old, alias, hidden=True, **option)(command)

    return apply


def store_option(help: str, *, old: str | None = None) -> Decorator:
    """--store PATH (required), and the command's old spelling of it."""
    kind = click.Path(file_okay=False)
    decorators = [click.option("--store", "store", type=kind, default=None, help=help + "  [required]")]
    if old:
        decorators.append(renamed(old, "--store", "store", required=True, type=kind, default=None))
    else:
        decorators.append(_required("store", "--store"))
    return _stack(*decorators)


def _required(dest: str, flag: str) -> Decorator:
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get(dest) is None:
                raise click.UsageError(f"Missing option '{flag}'.")
            return f(*args, **kwargs)

        return command

    return apply


def legacy_store_argument(f: Callable[..., Any]) -> Callable[..., Any]:
    """inspect and verify took the store as a positional argument: still accepted, with a
    deprecation line."""

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        positional = kwargs.pop("positional_store")
        if positional is not None:
            if kwargs.get("store") is not None:
                raise click.UsageError("give the store once, with --store")
            click.echo("rld: the store as a positional argument is deprecated and will be removed in the next "
                       "release; use --store", err=True)
            kwargs["store"] = positional
        if kwargs.get("store") is None:
            raise click.UsageError("Missing option '--store'.")
        return f(*args, **kwargs)

    return click.argument("positional_store", required=False, metavar="", type=click.Path(file_okay=False))(command)


def dataset_options(required: bool = True) -> Decorator:
    return _stack(
        click.option("--dataset", required=required,
                     help="cifar100 | cifar10 | fashion-mnist | imagefolder | synthetic, options as name:key=value,..."),
        click.option("--data-root", type=click.Path(file_okay=False), default=None, envvar="RLD_DATA_ROOT",
                     help="Where datasets live (default ./data, or $RLD_DATA_ROOT; a student of a store: where the store read them, while that exists)."),
        click.option("--subset", type=click.IntRange(min=1), default=None, help="Keep the first N training samples of each class."),
        click.option("--test-subset", type=click.IntRange(min=1), default=None, help="Keep the first N test samples of each class."),
        click.option("--val-split", callback=_val_split, default=None,
                     help="Hold out N training images of each class (or a fraction, e.g. 0.1), drawn at random "
                          "from --val-seed, for validation: every choice is made on it, the test split only "
                          "reports. last:N holds out the last N of each class in file order instead."),
        click.option("--val-seed", cls=ShownDefault, type=int, default=None, show_default="0",
                     help="Seed the validation images are drawn from (with --val-split N)."),
        click.option("--augment", default=None, help="View family: crop[:size=32,padding=4] | resized-crop[:size=224]; default by dataset."),
    )


def runtime_options(channels_last: str | None = "on", *, workers: bool = True, amp_help: str = "") -> Decorator:
    """--device, --amp and, for stages that use them, --channels-last and --workers.

    `channels_last`: the flag's default, "on" or "auto" (on for CUDA, off on CPU); None: no flag.
    """
    options = [
        threads_option(),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N"),
        click.option("--amp", type=click.Choice(AMP_CHOICES), default="auto", show_default=True,
                     help="Autocast: auto = bf16 on CUDA, off on CPU." + amp_help),
    ]
    if channels_last == "auto":
        options.append(click.option("--channels-last/--no-channels-last", default=None,
                                    help="channels_last memory format [default: on for CUDA, off on CPU]."))
    elif channels_last == "on":
        options.append(click.option("--channels-last/--no-channels-last", default=True, show_default=True,
                                    help="channels_last memory format of the model being trained."))
    if workers:
        options.append(click.option("--workers", type=click.IntRange(min=0), default=None,
                                    help="DataLoader worker processes building views (default on CUDA: the job's CPUs - 1, i.e. its affinity capped by OMP_NUM_THREADS, 1 to 8; 0 on CPU)."))
    return _stack(*options)


NO_CHECK = click.option(
    "--no-check", is_flag=True,
    help="Do not decode every image of an image folder before starting (it finds every bad file in one pass; "
         "a folder that passed is remembered by its fingerprint and not decoded again).")


def decode_check(sets: list[Any], skip: bool, progress: bool = True) -> None:
    """`rld data check` before a long run on an image folder, unless `skip`."""
    if skip:
        return
    from pipeline.data import decode_check_cache, require_decodable
    from pipeline.runtime import cpu_budget

    require_decodable([s for s in sets if s is not None], num_workers=min(8, cpu_budget()), cache=decode_check_cache(),
                      progress=progress)


def threads_option() -> Decorator:
    from pipeline.recipe import DEFAULT_THREADS

    return click.option("--threads", type=click.IntRange(min=1), default=None, show_default=str(DEFAULT_THREADS),
                        help="CPU threads of torch. A CPU rounds sums differently with another count, so the "
                             "same student needs the same count (the workflow passes its `threads`).")


def _val_split(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from pipeline.splits import parse_val_split

    try:
        return parse_val_split(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def val_split_with_seed(val_split: Any, val_seed: int | None) -> Any:
    """--val-split with the seed --val-seed gives it (None: the split's own, 0)."""
    if val_split is None:
        if val_seed is not None:
            raise click.UsageError("--val-seed needs --val-split")
        return None
    from pipeline.splits import parse_val_split

    return parse_val_split(val_split, seed=val_seed)


def _milestones(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated epochs like 150,180,210, got {value!r}") from None


def _shown(name: str) -> str:
    value = default(name)
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def arch_option() -> Decorator:
    return click.option("--arch", required=True,
                        help="Model name: mdistiller's (e.g. resnet8x4), torchvision:NAME or timm:NAME; "
                             "`rld models` lists them.")


def _given(value: Any) -> bool:
    """Whether an option was set; 0 is a value (0 == False, so `in (None, False)` would drop it)."""
    return value is not None and value is not False and value != ()


def recipe_options(epochs_help: str = "Epochs to train.", epochs_default: str | None = None) -> Decorator:
    """The optimiser recipe and the training seed. Unset, each takes the paper's CIFAR-100
    value from `pipeline.recipe.TrainConfig` (shown as the default)."""
    return _stack(
        click.option("--epochs", cls=ShownDefault, type=click.IntRange(min=1), default=None,
                     show_default=epochs_default or _shown("epochs"), help=epochs_help),
        click.option("--batch-size", cls=ShownDefault, type=click.IntRange(min=1), default=None,
                     show_default=_shown("batch_size"),
                     help="Images per SGD step."),
        click.option("--lr", cls=ShownDefault, type=float, default=None, show_default=_shown("lr"),
                     help="Learning rate of SGD."),
        click.option("--momentum", cls=ShownDefault, type=float, default=None, show_default=_shown("momentum"),
                     help="SGD momentum."),
        click.option("--weight-decay", cls=ShownDefault, type=float, default=None, show_default=_shown("weight_decay"),
                     help="L2 weight decay of SGD."),
        click.option("--milestones", cls=ShownDefault, callback=_milestones, default=None,
                     show_default="the paper's 150,180,210 of 240, scaled to --epochs",
                     help="Epochs after which the lr is multiplied by --lr-decay (empty: constant lr)."),
        click.option("--lr-decay", cls=ShownDefault, type=float, default=None, show_default=_shown("lr_decay"),
                     help="Factor the lr is multiplied by at each milestone."),
        click.option("--seed", cls=ShownDefault, type=int, default=None, show_default=_shown("seed"),
                     help="Training seed: initialisation, sample order and which view slot each sample replays."),
        click.option("--init", default=None, metavar="WEIGHTS",
                     help="Start from these weights (mdistiller, torchvision, timm or rld teacher/student files; "
                          "'pretrained': the architecture's published weights, downloaded). A classifier for "
                          "another class count is initialised afresh, a first convolution for other input "
                          "channels adapted; the run says which."),
        click.option("--backbone-lr-scale", cls=ShownDefault, type=float, default=None, show_default="1",
                     help="With --init: the loaded layers learn at --lr times this, a new classifier at --lr."),
        click.option("--force-schedule", is_flag=True,
                     help="Train with --milestones and --warmup as given even where they reach past the last epoch "
                          "(refused otherwise)."),
    )


RECIPE_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "lr_decay", "seed",
               "force_schedule", "init", "backbone_lr_scale")


def given_recipe(values: dict[str, Any]) -> dict[str, Any]:
    """The recipe options the user set; the rest are left to TrainConfig's defaults."""
    # `is`: --lr 0 and --weight-decay 0 are settings (0 == False); --milestones '' is one too
    return {k: values[k] for k in RECIPE_KEYS if values.get(k) is not None and values.get(k) is not False}


def cuda_graph_option() -> Decorator:
    return _stack(
        click.option("--cuda-graph", "cuda_graph", is_flag=True,
                     help="Replay the training step as a CUDA graph (forward, loss, backward, SGD step): the same "
                          "computation up to float rounding, one launch per step instead of hundreds. CUDA only (on a "
                          "CPU it trains eagerly, saying so); not with --amp fp16 or DDP. A run may resume with or "
                          "without it."),
        renamed("--compile", "--cuda-graph", "cuda_graph", is_flag=True, default=False),
    )


# ---------------------------------------------------------------------------------------
# Loss options: one flag per option of any method, made from the method registry.

SHORT_FLAGS = {"temperature": "-T"}


def loss_flag(name: str) -> str:
    """The CLI flag of a method option: ce_weight -> --ce-weight."""
    return "--" + name.replace("_", "-")


def _flag_help(name: str) -> str:
    text = option_meanings(name)
    return text[0].upper() + text[1:]


def loss_options() -> Decorator:
    """A flag for every method option; left out, the method's default holds. Which flags a
    method takes, and their defaults, are listed by `method_epilog`."""
    decorators = []
    for name in option_names():
        declared = [m.option(name) for m in REGISTRY.values() if name in m.defaults]
        kind, flag = declared[0].kind, loss_flag(name)
        if kind == "flag":
            decorators.append(click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=_flag_help(name)))
        elif kind == "choice":
            choices = sorted({c for option in declared for c in option.choices})
            decorators.append(click.option(flag, name, type=click.Choice(choices), default=None, help=_flag_help(name)))
        else:
            short = [SHORT_FLAGS[name]] if name in SHORT_FLAGS else []
            decorators.append(click.option(flag, *short, name, type=float, default=None, help=_flag_help(name)))
    return _stack(*decorators)


def method_epilog() -> str:
    """Each method's flags with their defaults, for a command's --help."""
    lines = ["Methods (--loss) and their options, with defaults:", "", "\b"]
    for method in REGISTRY.values():
        flags = " ".join(
            (f"--{'' if o.default else 'no-'}{o.name.replace('_', '-')}" if o.kind == "flag"
             else f"{loss_flag(o.name)} {o.describe_default()}")
            for o in method.options
        )
        lines.append(f"  {method.name:<5} {flags}")
    lines += ["", "docs/methods.md says what each method and option does, and which official quirks it keeps."]
    return "\n".join(lines)


def checked_loss_options(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave for `method`, checked against the registry, in CLI words."""
    spec = REGISTRY[method]
    checked = {}
    for name in sorted(given, key=option_names().index):  # one order, whatever the command line's
        value = given[name]
        if name not in spec.defaults:
            valid = ", ".join(loss_flag(k) for k in spec.defaults)
            raise ValueError(f"{loss_flag(name)} does not apply to --loss {method}; its options: {valid}")
        option = spec.option(name)
        try:
            checked[name] = option.check(method, value)
        except ValueError:
            raise ValueError(f"{loss_flag(name)} {value} is out of range for --loss {method}: it must be {option.valid}") from None
    return checked
