"""`rld models`: the architectures a teacher or a student can be."""

from __future__ import annotations

import click


@click.command("models", short_help="The architectures a teacher or a student can be.")
@click.option("--classes", type=click.IntRange(min=1), default=100, show_default=True,
              help="Class count the parameter counts are for.")
@click.option("--torchvision", "with_torchvision", is_flag=True,
              help="Also list torchvision's classification models (as torchvision:NAME).")
@click.option("--timm", "timm_pattern", default=None, metavar="PATTERN",
              help="Also list the timm models matching PATTERN, e.g. '*efficientnet*' (needs timm).")
def models_cmd(classes: int, with_torchvision: bool, timm_pattern: str | None) -> None:
    """List the architectures by name, with their parameter count and input size.

    mdistiller's CIFAR models (32x32 input) and ImageNet models (224x224) are built in; any
    torchvision classification model is `torchvision:NAME` and, with timm installed, any timm
    model `timm:NAME`: these pool adaptively and take the input size of the run's views.
    """
    from pipeline import models
    from pipeline.models.external import timm_names, torchvision_names
    from stages._options import fail

    click.echo(f"{'name':<14} {'family':<9} {'input':>7} {'parameters':>12}   (at {classes} classes, 3 input channels)")
    for name in models.available():
        spec = models.get_spec(name)
        params = sum(p.numel() for p in models.build(name, classes).parameters())
        click.echo(f"{name:<14} {spec.family:<9} {spec.input_size:>4} px {params / 1e6:>10.2f} M")
    if with_torchvision:
        names = ", ".join(f"torchvision:{n}" for n in torchvision_names())
        click.echo(f"\ntorchvision (input: the run's view size): {names}")
    if timm_pattern:
        try:
            timm_names()  # says how to install timm where it is missing
        except ValueError as err:
            raise fail(err) from None
        import timm

        names = timm.list_models(timm_pattern)
        click.echo(f"\ntimm matching {timm_pattern!r}: " + (", ".join(f"timm:{n}" for n in names) or "none"))
    if not (with_torchvision or timm_pattern):
        click.echo("\nAlso: torchvision:NAME (rld models --torchvision lists them) and timm:NAME "
                   "(rld models --timm PATTERN, with timm installed).")
