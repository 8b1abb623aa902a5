"""Every command refuses abbreviated flags: with argparse's default, `glimmer-run --conf 0.5` was
read as `--config 0.5`, and a flag added later silently changes what an old abbreviation means."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "calibration", "models", "train", "benchmarks", "scripts")


def _parser_calls():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "ArgumentParser"
                ):
                    yield path.relative_to(ROOT), node


def test_every_argument_parser_turns_abbreviations_off():
    calls = list(_parser_calls())
    assert len(calls) >= 8  # the eight glimmer-* commands at least
    for path, node in calls:
        keywords = {k.arg: k.value for k in node.keywords}
        value = keywords.get("allow_abbrev")
        assert isinstance(value, ast.Constant) and value.value is False, (
            f"{path}:{node.lineno}: ArgumentParser without allow_abbrev=False"
        )


def test_an_abbreviated_flag_is_an_error_not_another_flag(capsys):
    from glimmer.runtime.tools.run import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--mod", "m.onnx", "--source", "x.mp4"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --mod" in capsys.readouterr().err
