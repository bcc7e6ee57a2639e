"""What is made from the method registry stays in step with it: the config schema's loss
block, docs/methods.md and `rld student train`'s flags and help."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from helpers import REPO, cli

from pipeline.methods import REGISTRY, option_names


@pytest.mark.slow
def test_schema_and_methods_doc_are_generated_from_the_registry() -> None:
    proc = subprocess.run([sys.executable, "tools/generate.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_accepts_each_methods_options_and_nothing_else() -> None:
    definitions = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["definitions"]
    assert definitions["loss"]["enum"] == list(REGISTRY)
    assert list(definitions["loss_options"]["properties"]) == list(option_names())
    assert definitions["loss_options"]["additionalProperties"] is False


def test_student_train_help_lists_every_method_with_its_options_and_defaults() -> None:
    result = cli("student", "train", "--help")
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("    ") and line.strip()}
    for method in REGISTRY.values():
        listed = lines[method.name].split()[1:]
        flags = [word for word in listed if word.startswith("--")]
        assert flags == [("--no-" if o.kind == "flag" and not o.default else "--") + o.name.replace("_", "-")
                         for o in method.options], method.name
    for name in option_names():
        assert "--" + name.replace("_", "-") in result.output


def test_a_flag_of_another_method_or_out_of_range_fails_in_one_line_before_any_work(tmp_path) -> None:
    base = ["student", "train", "--arch", "resnet8", "--dataset", "synthetic:classes=4,train=8,test=4", "--out",
            str(tmp_path / "s")]
    result = cli(*base, "--loss", "lr", "--temperature", "2")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: --temperature does not apply to --loss lr; its options: --ce-weight, "
                                     "--mse-weight, --revised-weight, --eta")
    result = cli(*base, "--loss", "lr", "--eta", "1.5")
    assert result.stderr.strip() == "Error: --eta 1.5 is out of range for --loss lr: it must be a number in (0, 1]"
    result = cli(*base, "--loss", "mlkd")
    assert result.exit_code == 1 and "Error: --loss mlkd needs a teacher" in result.stderr
    assert not (tmp_path / "s").exists()
