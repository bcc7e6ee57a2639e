"""The `rld` command: one click group, each stage registers its command here."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rld-offline", prog_name="rld")
def main() -> None:
    """Offline-logit knowledge distillation with Refined Logit Distillation (RLD)."""


if __name__ == "__main__":
    main()
