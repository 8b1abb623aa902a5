"""deploy.toml: typed keys, errors naming the key (with did-you-mean), [checks] handed on, flags
win."""

from pathlib import Path

import pytest

from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.tools.config import DeployConfig, load_config
from glimmer.runtime.tools.run import build_parser, main, settings_from

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path


def test_values_defaults_and_relative_paths(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            '[model]\npath = "m/model.onnx"\nthreads = 2\n'
            "[runtime]\nsource = 0\n[classify]\nalert_frames = 7\n",
        )
    )
    assert cfg["model.path"] == tmp_path / "m" / "model.onnx"  # relative to the file, not the cwd
    assert cfg["model.threads"] == 2 and cfg["runtime.source"] == "0"
    assert cfg["classify.alert_frames"] == 7 and cfg["classify.smoothing"] == 0.6  # default kept
    assert cfg["model.backend"] == "auto" and cfg["runtime.loop"] == 1


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[runtime]\nsorce = "a.mp4"\n',
            "unknown key 'runtime.sorce' (did you mean 'runtime.source'?)",
        ),
        ('[runtim]\nsource = "a.mp4"\n', "unknown key 'runtim' (did you mean 'runtime'?)"),
        (
            '[model]\nsource = "a.mp4"\n',
            "unknown key 'model.source' (did you mean 'runtime.source'?)",
        ),
        (
            '[classify]\nalert_frames = "five"\n',
            "key 'classify.alert_frames' must be an integer, got string 'five'",
        ),
        (
            "[classify]\nalert_frames = true\n",
            "key 'classify.alert_frames' must be an integer, got boolean",
        ),
        ('[detect]\niou = "high"\n', "key 'detect.iou' must be a number"),
        ("[detect]\nconf = 1.5\n", "key 'detect.conf' must be at most 1"),
        (
            '[model]\nbackend = "tensorrtt"\n',
            "key 'model.backend' must be one of auto, onnxruntime, tensorrt, got 'tensorrtt' "
            "(did you mean 'tensorrt'?)",
        ),
        ('[runtime]\nshow = "yes"\n', "key 'runtime.show' must be true or false"),
        (
            '[model]\nint8_kernels = "fast"\n',
            "key 'model.int8_kernels' must be one of auto, fused, simulated, got 'fast'",
        ),
        ('model = "x.onnx"\n', "key 'model' must be a table"),
        ("[model\npath = 1\n", "not valid TOML"),
    ],
)
def test_bad_keys_and_types_are_errors_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(GlimmerError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_checks_table_is_accepted_and_handed_on_unvalidated(tmp_path):
    cfg = load_config(
        write(tmp_path, '[checks]\nanything = 1\n[checks.glimmernet]\nmin_fps = "x"\n')
    )
    assert cfg.checks == {"anything": 1, "glimmernet": {"min_fps": "x"}}
    assert DeployConfig().checks is None


def test_flags_override_the_config(tmp_path):
    path = write(
        tmp_path,
        '[model]\npath = "a.onnx"\nbackend = "tensorrt"\n'
        '[runtime]\nsource = "clip.mp4"\nmax_frames = 3\nduration = 9.0\n'
        '[outputs]\njsonl = "r.jsonl"\n',
    )
    args = build_parser().parse_args(
        [
            "--config",
            str(path),
            "--backend",
            "onnxruntime",
            "--camera",
            "2",
            "--max-frames",
            "10",
            "--output",
            "other.jsonl",
        ]
    )
    cfg = settings_from(args)
    assert cfg["model.backend"] == "onnxruntime" and cfg["runtime.source"] == "2"
    assert cfg["runtime.max_frames"] == 10 and cfg["outputs.jsonl"] == "other.jsonl"
    assert (
        cfg["model.path"] == tmp_path / "a.onnx" and cfg["runtime.duration"] == 9.0
    )  # not overridden


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    path = write(tmp_path, "[classify]\ntop_kk = 2\n")
    assert run_cli("glimmer-run", main, ["--config", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"glimmer-run: error: {path}: unknown key 'classify.top_kk' (did you mean "
        "'classify.top_k'?)"
    ]


def test_cli_needs_a_model_and_a_source(capsys):
    assert run_cli("glimmer-run", main, ["--source", "x.mp4"]) == 1
    assert "no model: give --model" in capsys.readouterr().err
    assert run_cli("glimmer-run", main, ["--model", "x.onnx"]) == 1
    assert "no source: give --camera N or --source URI" in capsys.readouterr().err


def test_flag_values_are_checked_like_config_values(capsys):
    assert (
        run_cli("glimmer-run", main, ["--model", "m.onnx", "--camera", "0", "--threads", "0"]) == 1
    )
    assert "--threads: key 'model.threads' must be at least 1" in capsys.readouterr().err


def test_repository_deploy_toml_is_valid():
    cfg = load_config(REPO / "deploy.toml")
    assert cfg["model.path"] == REPO / "demo" / "glimmernet.onnx"
    assert cfg["model.int8_kernels"] == "auto"
    assert cfg["runtime.source"]
