"""The `rld` command: one click group, the stages in the order a pipeline runs them."""

from __future__ import annotations

import click

from stages._options import InPipelineOrder
from stages.data import data
from stages.dump import dump_cmd
from stages.ensemble import ensemble_cmd
from stages.gpu import on_gpus_cmd
from stages.inspect import inspect_cmd
from stages.models import models_cmd
from stages.report import report_cmd
from stages.student import student
from stages.teacher import teacher
from stages.verify import verify_cmd


@click.group(cls=InPipelineOrder, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rld-offline", prog_name="rld")
def main() -> None:
    """Offline-logit knowledge distillation with Refined Logit Distillation (RLD).

    A teacher runs once over every augmented view into a logit store; any number of
    students then distil from the store. docs/cli.md describes every command.
    """


for command in (data, teacher, dump_cmd, ensemble_cmd, inspect_cmd, verify_cmd, student, report_cmd, models_cmd, on_gpus_cmd):
    main.add_command(command)


if __name__ == "__main__":
    main()
