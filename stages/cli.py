"""The `rld` command: one click group, each stage registers its command here."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rld-offline", prog_name="rld")
def main() -> None:
    """Offline-logit knowledge distillation with Refined Logit Distillation (RLD)."""


from stages.data import data  # noqa: E402
from stages.dump import dump_cmd  # noqa: E402
from stages.gpu import on_gpus_cmd  # noqa: E402
from stages.report import report_cmd  # noqa: E402
from stages.student import student  # noqa: E402
from stages.teacher import teacher  # noqa: E402
from stages.verify import verify_cmd  # noqa: E402

main.add_command(data)
main.add_command(teacher)
main.add_command(dump_cmd)
main.add_command(on_gpus_cmd)
main.add_command(student)
main.add_command(verify_cmd)
main.add_command(report_cmd)

from stages.inspect import inspect_cmd  # noqa: E402

main.add_command(inspect_cmd)


if __name__ == "__main__":
    main()
