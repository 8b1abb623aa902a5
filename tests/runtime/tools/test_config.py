"""deploy.toml: typed keys, errors naming the key (with did-you-mean), [checks] handed on, flags
win."""

from pathlib import Path

import pytest

from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.tools.config import SCHEMA, DeployConfig, load_config
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
        '[outputs]\noutput = "r.jsonl"\n',
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
    assert cfg["runtime.max_frames"] == 10 and cfg["outputs.output"] == "other.jsonl"
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


def test_live_stream_keys_have_defaults_and_bounds(tmp_path):
    cfg = DeployConfig()
    assert (
        cfg["runtime.stall_timeout"],
        cfg["runtime.reconnects"],
        cfg["runtime.connect_timeout"],
    ) == (5.0, 5, 10.0)
    cfg = load_config(
        write(tmp_path, "[runtime]\nstall_timeout = 2\nreconnects = 0\nconnect_timeout = 0.5\n")
    )
    assert (
        cfg["runtime.stall_timeout"],
        cfg["runtime.reconnects"],
        cfg["runtime.connect_timeout"],
    ) == (2.0, 0, 0.5)
    for text, message in (
        ("stall_timeout = 0.0", "key 'runtime.stall_timeout' must be at least 0.1"),
        ("reconnects = -1", "key 'runtime.reconnects' must be at least 0"),
        ("connect_timeout = 0.01", "key 'runtime.connect_timeout' must be at least 0.1"),
        ("reconnects = 1.5", "key 'runtime.reconnects' must be an integer"),
    ):
        with pytest.raises(GlimmerError, match=message):
            load_config(write(tmp_path, f"[runtime]\n{text}\n"))


def test_live_stream_keys_reach_the_source_options(tmp_path):
    """The names glimmer-run hands to SourceOptions (the sources' side adds the fields)."""
    from glimmer.runtime.tools.run import source_options

    cfg = load_config(
        write(tmp_path, "[runtime]\nstall_timeout = 2\nreconnects = 3\nconnect_timeout = 4\n")
    )
    options = source_options(cfg)
    assert (options.stall_timeout_s, options.retries, options.connect_timeout_s) == (2.0, 3, 4.0)


def test_output_sub_tables_are_handed_on_raw(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            '[outputs]\noutput = "r.jsonl"\n[outputs.mavlink]\nurl = "udp:127.0.0.1:14550"\n'
            'rate = 2\n[outputs.mqtt]\nhost = "broker"\nqos = { level = 1 }\n',
        )
    )
    assert cfg["outputs.mavlink"] == {"url": "udp:127.0.0.1:14550", "rate": 2}
    assert cfg["outputs.mqtt"] == {"host": "broker", "qos": {"level": 1}}
    assert cfg["outputs.output"] == tmp_path / "r.jsonl"
    assert DeployConfig()["outputs.mavlink"] is None and DeployConfig()["outputs.mqtt"] is None
    with pytest.raises(
        GlimmerError, match=r"key 'outputs.mqtt' must be a table \(\[outputs.mqtt\]\)"
    ):
        load_config(write(tmp_path, '[outputs]\nmqtt = "broker"\n'))
    with pytest.raises(GlimmerError, match="unknown key 'outputs.mavlnk'"):
        load_config(write(tmp_path, "[outputs.mavlnk]\nurl = 1\n"))


def test_a_profile_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "deploy.toml"
    path.write_bytes('[model]\n# caf\u00e9 profile\npath = "m.onnx"\n'.encode("latin-1"))
    with pytest.raises(GlimmerError, match=r"not UTF-8 \(byte 0xe9 on line 2\)"):
        load_config(path)
    assert run_cli("glimmer-run", main, ["--config", str(path), "--source", "x.mp4"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"glimmer-run: error: {path}: not UTF-8 (byte 0xe9 on line 2); TOML files must be UTF-8: "
        "save it as UTF-8\n"
    )


def test_normal_class_defaults_to_none_meaning_normal_if_present(tmp_path):
    assert DeployConfig()["classify.normal_class"] is None
    assert (
        load_config(write(tmp_path, '[classify]\nnormal_class = ""\n'))["classify.normal_class"]
        == ""
    )


def test_flags_and_keys_share_one_vocabulary():
    """Every glimmer-run flag that a deploy.toml key can also set has that key's name."""
    keys = {name for section in SCHEMA.values() for name in section}
    # flags with no key of their own, and the few whose key reads better in its table
    own = {"--config", "--verbose", "--meta", "--help", "--headless", "--camera"}
    named_by_table = {"--model": "path", "--no-cuda-graph": "cuda_graph"}
    for action in build_parser()._actions:
        for flag in action.option_strings:
            if not flag.startswith("--") or flag in own:
                continue
            name = named_by_table.get(flag, flag[2:].replace("-", "_"))
            assert name in keys, f"{flag} sets no deploy.toml key named {name!r}"


def test_a_renamed_key_says_its_new_name(tmp_path):
    path = tmp_path / "deploy.toml"
    path.write_text('[outputs]\njsonl = "r.jsonl"\n')
    with pytest.raises(GlimmerError, match="key 'outputs.jsonl' is now 'outputs.output'"):
        load_config(path)
