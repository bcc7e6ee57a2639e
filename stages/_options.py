"""Click options shared by several stages, so each flag means the same thing everywhere."""

from __future__ import annotations

from typing import Any, Callable

import click

from pipeline.data import parse_val_split
from pipeline.methods import REGISTRY, option_meanings, option_names
from pipeline.runtime import AMP_CHOICES

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _stack(*decorators: Decorator) -> Decorator:
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def dataset_options(required: bool = True) -> Decorator:
    return _stack(
        click.option("--dataset", required=required, help="cifar100 | cifar10 | fashion-mnist | imagefolder | synthetic, options as name:key=value,..."),
        click.option("--data-root", type=click.Path(file_okay=False), default=None, envvar="RLD_DATA_ROOT",
                     help="Where datasets live (default ./data, or $RLD_DATA_ROOT)."),
        click.option("--subset", type=click.IntRange(min=1), default=None, help="Keep the first N training samples of each class."),
        click.option("--test-subset", type=click.IntRange(min=1), default=None, help="Keep the first N test samples of each class."),
        click.option("--val-split", callback=_val_split, default=None,
                     help="Hold out the last N training samples of each class (or a fraction, e.g. 0.1) for "
                          "validation: students select best.pt on it; the test split only reports."),
        click.option("--augment", default=None, help="View family: crop[:size=32,padding=4] | resized-crop[:size=224]; default by dataset."),
    )


def runtime_options(channels_last: str | None = "on", *, workers: bool = True, amp_help: str = "") -> Decorator:
    """--device, --amp and, for stages that use them, --channels-last and --workers.

    `channels_last`: the flag's default, "on" or "auto" (on for CUDA, off on CPU); None: no flag.
    """
    options = [
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


def _val_split(ctx: click.Context, param: click.Parameter, value: str | None) -> int | float | None:
    try:
        return parse_val_split(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def fail(err: Exception) -> click.ClickException:
    """One line for the user instead of a traceback."""
    return click.ClickException(str(err).strip())


def _milestones(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated epochs like 150,180,210, got {value!r}") from None


def recipe_options(default_epochs: int | None = 240) -> Decorator:
    """The optimiser recipe; defaults are the paper's CIFAR-100 settings."""
    return _stack(
        click.option("--epochs", type=click.IntRange(min=1), default=default_epochs, show_default=default_epochs is not None),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--lr", type=float, default=0.05, show_default=True),
        click.option("--momentum", type=float, default=0.9, show_default=True),
        click.option("--weight-decay", type=float, default=5e-4, show_default=True),
        click.option("--milestones", callback=_milestones, default="150,180,210", show_default=True,
                     help="Epochs after which the lr is multiplied by --lr-decay (empty: constant lr)."),
        click.option("--lr-decay", type=float, default=0.1, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
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
