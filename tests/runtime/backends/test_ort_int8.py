"""INT8 on ONNX Runtime's CPU EP: the CPU flag reader, the fused / simulated policy, and a real
Q/DQ model built here whose session gets ``session.disable_quant_qdq`` where the CPU (stubbed)
would saturate, proven by ORT's own optimized graph (QLinearConv or not) and by outputs equal to
a numpy float simulation of the Q/DQ arithmetic; plus the deploy.toml key, the flags and
glimmer-check's notes."""

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from glimmer.runtime.backends.factory import open_backend
from glimmer.runtime.backends.ort import runner as ort_runner
from glimmer.runtime.backends.ort.int8 import (
    DISABLE_QDQ,
    check_int8_kernels,
    int8_policy,
    weight_bits,
)
from glimmer.runtime.backends.ort.runner import OnnxRuntimeBackend
from glimmer.runtime.core import cpu
from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.cpu import CpuFacts, parse_cpu_flags
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.tools.bench import build_parser as bench_parser
from glimmer.runtime.tools.check import format_table
from glimmer.runtime.tools.config import load_config
from glimmer.runtime.tools.regression import parse_check, run_check
from glimmer.runtime.tools.run import build_parser, main, settings_from

# -- /proc/cpuinfo samples (abridged to the lines that matter) ------------------------------------
AVX2 = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i7-8700 CPU\n"
    "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma avx2 bmi2\n"
    "vmx flags\t: vnmi avx512_vnni\nbugs\t\t: spectre_v1\n"
)
AVX512 = (
    "model name\t: Intel(R) Xeon(R) Gold 6130\nflags\t\t: sse2 avx avx2 avx512f avx512bw avx512vl\n"
)
AVX512_VNNI = (
    "model name\t: Intel(R) Xeon(R) Gold 6230\nflags\t\t: avx2 avx512f avx512bw avx512_vnni\n"
)
AVX_VNNI = "model name\t: 12th Gen Intel(R) Core(TM) i5-12400\nflags\t\t: avx2 avx_vnni sha_ni\n"
SSE_ONLY = "model name\t: Intel(R) Atom(TM) CPU N270\nflags\t\t: fpu sse sse2 ssse3\n"
ORIN = (
    "processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 "
    "atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n"
)
NANO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n"


@pytest.mark.parametrize(
    "text, arch, saturates, dot, description",
    [
        (AVX2, "x86_64", True, "", "x86_64, AVX2 without VNNI: u8*s8 pair sums saturate int16"),
        (
            AVX512,
            "x86_64",
            True,
            "",
            "x86_64, AVX-512 without VNNI: u8*s8 pair sums saturate int16",
        ),
        (AVX512_VNNI, "x86_64", False, "AVX-512 VNNI", "x86_64, AVX-512 VNNI"),
        (AVX_VNNI, "x86_64", False, "AVX-VNNI", "x86_64, AVX-VNNI"),
        (
            SSE_ONLY,
            "x86_64",
            False,
            "",
            "x86_64, SSE without AVX2: int8 widened to 16 bits, no saturation",
        ),
        (
            "",
            "x86_64",
            True,
            "",
            "x86_64, CPU flags unreadable: assuming u8*s8 pair sums saturate int16",
        ),
        (
            ORIN,
            "aarch64",
            False,
            "dotprod (SDOT/UDOT)",
            "aarch64, dotprod (SDOT/UDOT), no saturation",
        ),
        (NANO, "aarch64", False, "", "aarch64, no dotprod: int8 widened to 16 bits, no saturation"),
        (AVX2, "riscv64", False, "", "riscv64: portable int8 kernels, no saturation"),
    ],
)
def test_cpu_flags_and_facts(text, arch, saturates, dot, description):
    facts = CpuFacts.from_flags(arch, parse_cpu_flags(text, arch))
    assert (facts.arch, facts.saturates, facts.int8_dot, facts.description) == (
        arch,
        saturates,
        dot,
        description,
    )


def test_flag_lines_per_architecture():
    assert "avx512_vnni" not in parse_cpu_flags(AVX2, "x86_64")  # "vmx flags" is not the flags line
    assert "asimddp" in parse_cpu_flags(ORIN, "aarch64") and "avx2" not in parse_cpu_flags(
        AVX2, "aarch64"
    )
    assert parse_cpu_flags(AVX2, "riscv64") == frozenset()


def test_flags_are_read_once_and_an_unreadable_cpuinfo_is_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "CPUINFO", str(tmp_path / "absent"))
    assert cpu.read_cpu_flags() == frozenset()
    calls = []
    monkeypatch.setattr(cpu, "read_cpu_flags", lambda: calls.append(1) or frozenset({"avx2"}))
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    cpu.cpu_facts.cache_clear()
    try:
        assert cpu.cpu_facts().saturates and cpu.cpu_facts() is cpu.cpu_facts() and calls == [1]
    finally:
        cpu.cpu_facts.cache_clear()


# -- the policy -----------------------------------------------------------------------------------
SATURATING = CpuFacts.from_flags("x86_64", frozenset({"avx2"}))
VNNI = CpuFacts.from_flags("x86_64", frozenset({"avx2", "avx512_vnni"}))
ARM = CpuFacts.from_flags("aarch64", frozenset({"asimd"}))
CLASSES = ["Normal", "Fire", "Flood", "Smoke"]


TRT_REASON = (
    "TensorRT placement: no integer kernels either way; unfused, the weights' dequantisation folds "
    "into constants"
)
TRT = {"int8": {"weight_bits": 8, "placement": "tensorrt (Conv/Gemm inputs and weights)"}}


def meta_of(precision: str = "int8", extra=None) -> ModelMeta:
    return ModelMeta(
        task="classify",
        name="qdq",
        class_names=CLASSES,
        input_size=(8, 8),
        precision=precision,
        extra={"int8": {"weight_bits": 8}} if extra is None else extra,
    )


@pytest.mark.parametrize(
    "meta, facts, setting, mode, reason",
    [
        (
            meta_of(),
            SATURATING,
            "auto",
            "simulated",
            "x86_64, AVX2 without VNNI: u8*s8 pair sums saturate int16; 8-bit weights",
        ),
        (
            meta_of(extra={}),
            SATURATING,
            "auto",
            "simulated",  # an older file: 8-bit weights
            "x86_64, AVX2 without VNNI: u8*s8 pair sums saturate int16; 8-bit weights",
        ),
        (
            meta_of(extra={"int8": {"weight_bits": 7}}),
            SATURATING,
            "auto",
            "fused",
            "x86_64, AVX2 without VNNI: u8*s8 pair sums saturate int16; "
            "7-bit weights: pair sums fit int16",
        ),
        (meta_of(), VNNI, "auto", "fused", "x86_64, AVX-512 VNNI"),
        (
            meta_of(),
            ARM,
            "auto",
            "fused",
            "aarch64, no dotprod: int8 widened to 16 bits, no saturation",
        ),
        (
            meta_of(),
            SATURATING,
            "fused",
            "fused",
            "int8_kernels = fused; x86_64, AVX2 without VNNI: u8*s8 pair sums saturate int16; "
            "8-bit weights",
        ),
        (
            meta_of(),
            VNNI,
            "simulated",
            "simulated",
            "int8_kernels = simulated; x86_64, AVX-512 VNNI",
        ),
        (
            meta_of(extra=TRT),
            SATURATING,
            "auto",
            "simulated",
            "x86_64, AVX2 without VNNI: u8*s8 pair sums saturate int16; " + TRT_REASON,
        ),
        (meta_of(extra=TRT), VNNI, "auto", "simulated", "x86_64, AVX-512 VNNI; " + TRT_REASON),
        (
            meta_of(extra=TRT),
            VNNI,
            "fused",
            "fused",
            "int8_kernels = fused; x86_64, AVX-512 VNNI; " + TRT_REASON,
        ),
        (meta_of("fp32"), SATURATING, "auto", None, "not an INT8 model (fp32)"),
        (meta_of("fp32"), VNNI, "simulated", None, "not an INT8 model (fp32)"),
    ],
)
def test_policy(meta, facts, setting, mode, reason):
    assert int8_policy(meta, facts, setting) == (mode, reason)


def test_weight_bits_defaults_to_8_and_bad_settings_are_errors():
    assert weight_bits(meta_of(extra={"int8": {"weight_bits": 7}})) == 7
    for extra in (
        {},
        {"int8": "yes"},
        {"int8": {"weight_bits": "7"}},
        {"int8": {"weight_bits": True}},
    ):
        assert weight_bits(meta_of(extra=extra)) == 8
    with pytest.raises(
        GlimmerError, match="int8_kernels must be one of auto, fused, simulated, got 'fast'"
    ):
        check_int8_kernels("fast")
    with pytest.raises(GlimmerError, match="int8_kernels must be one of"):
        int8_policy(meta_of(), VNNI, "int8")


# -- a real Q/DQ model in ONNX Runtime ------------------------------------------------------------
# Scales are powers of two and values lie on the grids, so every float sum is exact: the numpy
# simulation and ONNX Runtime agree to the last bit, whatever order they add in.
SX, SY = 2.0**-4, 2.0**-3
SW = np.array([2.0**-7, 2.0**-8, 2.0**-6, 2.0**-7], np.float32)
_rng = np.random.default_rng(0)
W = (_rng.integers(-127, 128, (4, 3, 3, 3)) * SW[:, None, None, None]).astype(np.float32)
B = (_rng.integers(-64, 65, 4) * 2.0**-6).astype(np.float32)


def qdq_classifier(path: Path, meta: ModelMeta) -> Path:
    """images -> Q/DQ -> Conv 3x3 (Q/DQ'd float weight, per channel; float bias) -> Q/DQ ->
    GlobalAveragePool -> logits [1, 4]: int8, zero point 0, with the conv's output quantised (ONNX
    Runtime's own quantiser's placement), the group its CPU provider fuses into an integer
    kernel."""
    # Its metadata is written by the export layer, which imports torch: absent from the runtime-only
    # Python 3.8 suite, where the tests built on this model skip.
    pytest.importorskip("torch")
    from glimmer.export.onnx_export import attach_metadata

    inits = [
        numpy_helper.from_array(np.array(SX, np.float32), "sx"),
        numpy_helper.from_array(np.array(SY, np.float32), "sy"),
        numpy_helper.from_array(np.array(0, np.int8), "zero"),
        numpy_helper.from_array(SW, "sw"),
        numpy_helper.from_array(np.zeros(4, np.int8), "zw"),
        numpy_helper.from_array(W, "W"),
        numpy_helper.from_array(B, "B"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "sx", "zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zero"], ["x"]),
        helper.make_node("QuantizeLinear", ["W", "sw", "zw"], ["wq"], axis=0),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"], axis=0),
        helper.make_node("Conv", ["x", "w", "B"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["conv", "sy", "zero"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "sy", "zero"], ["y"]),
        helper.make_node("GlobalAveragePool", ["y"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    attach_metadata(model, meta)
    onnx.save(model, str(path))
    return path


def simulate(x: np.ndarray) -> np.ndarray:
    """The Q/DQ arithmetic in float (round half to even, int8 saturation): what TensorRT
    computes."""

    def qdq(v, scale):
        return np.clip(np.round(v / scale), -128, 127) * scale

    pad = np.pad(qdq(x.astype(np.float64), SX), ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = (
        sum(
            np.einsum(
                "nchw,oc->nohw", pad[:, :, i : i + 8, j : j + 8], W[:, :, i, j].astype(np.float64)
            )
            for i in range(3)
            for j in range(3)
        )
        + B[None, :, None, None]
    )
    return qdq(conv, SY).mean(axis=(2, 3))


@pytest.fixture()
def stub_cpu(monkeypatch):
    """Pretend to be an x86_64 CPU with the given /proc/cpuinfo flags."""

    def stub(flags):
        monkeypatch.setattr(cpu, "read_cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
        cpu.cpu_facts.cache_clear()

    yield stub
    cpu.cpu_facts.cache_clear()


@pytest.fixture()
def sessions(monkeypatch, tmp_path):
    """Every InferenceSession made: its DISABLE_QDQ entry and the op types of ORT's optimized
    graph."""
    made = []
    real = onnxruntime.InferenceSession

    def spy(path, sess_options=None, providers=None, **kwargs):
        optimized = tmp_path / f"optimized{len(made)}.onnx"
        sess_options.optimized_model_filepath = str(optimized)
        try:
            entry = sess_options.get_session_config_entry(DISABLE_QDQ)
        except RuntimeError:  # not set
            entry = None
        session = real(path, sess_options=sess_options, providers=providers, **kwargs)
        made.append((entry, {n.op_type for n in onnx.load(str(optimized)).graph.node}))
        return session

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return made


@pytest.fixture()
def int8_model(tmp_path):
    return qdq_classifier(tmp_path / "qdq.int8.onnx", meta_of())


def grid_input() -> np.ndarray:
    """Values on the input grid, some beyond int8's range (saturated by QuantizeLinear)."""
    return (np.random.default_rng(1).integers(-140, 141, (1, 3, 8, 8)) * SX).astype(np.float32)


def test_saturating_cpu_runs_the_qdq_unfused_in_float(int8_model, stub_cpu, sessions):
    stub_cpu({"sse2", "avx", "avx2"})
    with OnnxRuntimeBackend(int8_model, threads=1) as be:
        assert be.int8_mode == "simulated"
        assert be.int8_execution == (
            "simulated in float: Q/DQ left unfused (x86_64, AVX2 without VNNI: "
            "u8*s8 pair sums saturate int16; 8-bit weights)"
        )
        assert (
            be.describe()
            == "onnxruntime (CPUExecutionProvider, 1 threads, INT8 simulated in float)"
        )
        (logits,) = be.infer(grid_input())
    ((entry, ops),) = sessions
    assert (
        entry == "1"
        and "QLinearConv" not in ops
        and {"Conv", "QuantizeLinear", "DequantizeLinear"} <= ops
    )
    np.testing.assert_allclose(logits, simulate(grid_input()), rtol=0, atol=1e-5)


def test_vnni_cpu_keeps_ort_fused_integer_kernels(int8_model, stub_cpu, sessions):
    stub_cpu({"avx2", "avx512f", "avx512_vnni"})
    with OnnxRuntimeBackend(int8_model, threads=1) as be:
        assert be.int8_mode == "fused"
        assert be.int8_execution == "ONNX Runtime's Q/DQ fusion on (x86_64, AVX-512 VNNI)"
        assert be.describe().endswith(", INT8 Q/DQ fusion on)")
        (logits,) = be.infer(grid_input())
    ((entry, ops),) = sessions
    assert entry is None and "QLinearConv" in ops
    np.testing.assert_allclose(
        logits, simulate(grid_input()), rtol=0, atol=1e-5
    )  # exact grid: no saturation


@pytest.mark.parametrize(
    "flags, setting, mode, entry",
    [({"avx2"}, "fused", "fused", None), ({"avx512_vnni"}, "simulated", "simulated", "1")],
)
def test_explicit_setting_is_honoured(int8_model, stub_cpu, sessions, flags, setting, mode, entry):
    stub_cpu(flags)
    with open_backend(int8_model, "onnxruntime", threads=1, int8_kernels=setting) as be:
        assert be.int8_mode == mode and be.int8_execution.startswith(
            ("ONNX Runtime's Q/DQ fusion on", "simulated")
        )
    assert sessions[0][0] == entry


def test_fp32_model_and_gpu_providers_are_left_alone(tmp_path, stub_cpu, sessions):
    stub_cpu({"avx2"})
    fp32 = qdq_classifier(tmp_path / "qdq.onnx", meta_of("fp32"))
    with OnnxRuntimeBackend(fp32, threads=1, int8_kernels="simulated") as be:
        assert be.int8_mode is None and be.int8_execution is None and "INT8" not in be.describe()
    assert sessions[0][0] is None
    be = OnnxRuntimeBackend(fp32)

    class Options:
        entries = {}

        def add_session_config_entry(self, key, value):
            self.entries[key] = value

    opts = Options()
    trt = [("TensorrtExecutionProvider", {}), ("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    assert be._int8_options(opts, meta_of(), trt) is None and opts.entries == {}
    assert be._int8_options(opts, meta_of(), ["CPUExecutionProvider"]) == int8_policy(
        meta_of(), SATURATING
    )
    assert opts.entries == {DISABLE_QDQ: "1"}


def test_metadata_is_read_once_before_the_session_and_not_when_given(
    int8_model, monkeypatch, stub_cpu
):
    stub_cpu({"avx2"})
    reads = []
    real = ort_runner.read_onnx_metadata
    monkeypatch.setattr(
        ort_runner, "read_onnx_metadata", lambda path: reads.append(path) or real(path)
    )
    with OnnxRuntimeBackend(int8_model, threads=1) as be:
        assert be.meta == meta_of() and be.int8_mode == "simulated"
    assert reads == [int8_model]
    with OnnxRuntimeBackend(
        int8_model, meta=meta_of(extra={"int8": {"weight_bits": 7}}), threads=1
    ) as be:
        assert be.int8_mode == "fused"  # the given metadata decides: 7-bit weights fit int16
    assert reads == [int8_model]


def test_a_bad_setting_is_an_error_naming_it(int8_model):
    with pytest.raises(
        GlimmerError, match="int8_kernels must be one of auto, fused, simulated, got 'on'"
    ):
        OnnxRuntimeBackend(int8_model, int8_kernels="on")
    with pytest.raises(GlimmerError, match="int8_kernels must be one of"):
        open_backend(int8_model, int8_kernels="on")


# -- deploy.toml, glimmer-run, glimmer-bench ------------------------------------------------------
def test_deploy_toml_key_and_flag(tmp_path, capsys):
    path = tmp_path / "deploy.toml"
    path.write_text('[model]\npath = "m.onnx"\nint8_kernels = "simulated"\n[runtime]\nsource = 0\n')
    assert load_config(path)["model.int8_kernels"] == "simulated"
    assert (
        settings_from(build_parser().parse_args(["--config", str(path)]))["model.int8_kernels"]
        == "simulated"
    )
    args = build_parser().parse_args(["--config", str(path), "--int8-kernels", "fused"])
    assert settings_from(args)["model.int8_kernels"] == "fused"  # the flag wins
    path.write_text('[model]\nint8_kernels = "fast"\n')
    assert run_cli("glimmer-run", main, ["--config", str(path)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"glimmer-run: error: {path}: key 'model.int8_kernels' must be one of auto, fused, "
        "simulated, got 'fast'"
    ]
    assert (
        run_cli(
            "glimmer-run", main, ["--model", "m.onnx", "--camera", "0", "--int8-kernels", "fuse"]
        )
        == 1
    )
    assert capsys.readouterr().err.strip().splitlines() == [
        "glimmer-run: error: --int8-kernels: key 'model.int8_kernels' must be one of auto, "
        "fused, simulated, got 'fuse' (did you mean 'fused'?)"
    ]
    assert (
        bench_parser().parse_args(["--model", "m.onnx", "--int8-kernels", "simulated"]).int8_kernels
        == "simulated"
    )


def test_glimmer_run_prints_the_int8_execution(int8_model, tmp_path, stub_cpu, capsys):
    stub_cpu({"avx2"})
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.full((16, 16, 3), 90, np.uint8))
    assert (
        main(
            [
                "--model",
                str(int8_model),
                "--source",
                str(frames),
                "--threads",
                "1",
                "--report",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    line = (
        "executed as simulated in float: Q/DQ left unfused (x86_64, AVX2 without VNNI: "
        "u8*s8 pair sums saturate int16; 8-bit weights)"
    )
    assert f"\nint8    {line}\n" in out
    assert line in (tmp_path / "r.json").read_text()
    assert (
        main(
            [
                "--model",
                str(int8_model),
                "--source",
                str(frames),
                "--threads",
                "1",
                "--int8-kernels",
                "fused",
            ]
        )
        == 0
    )
    assert (
        "int8    executed as ONNX Runtime's Q/DQ fusion on (int8_kernels = fused; x86_64"
        in capsys.readouterr().out
    )


# -- glimmer-check --------------------------------------------------------------------------------
def test_check_notes_the_int8_execution_and_validates_the_key(int8_model, tmp_path, stub_cpu):
    stub_cpu({"avx2"})
    fp32 = qdq_classifier(tmp_path / "qdq.onnx", meta_of("fp32"))
    for i, name in enumerate(CLASSES):
        (tmp_path / "data" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "data" / name / "1.png"), np.full((16, 16, 3), 60 * i, np.uint8))
    table = {
        "model": "qdq.int8.onnx",
        "reference": "qdq.onnx",
        "data": "data",
        "max_drop": 1.0,
        "threads": 1,
    }
    check = parse_check("tiny-int8-drop", table, "deploy.toml", tmp_path)
    assert check.int8_kernels == "auto" and check.reference == fp32
    result = run_check(check, "here")
    assert result.status == "PASS", result.rows
    assert result.details["int8_execution"] == {
        "model": (
            "executed as simulated in float: Q/DQ left unfused (x86_64, AVX2 without VNNI: "
            "u8*s8 pair sums saturate int16; 8-bit weights)"
        )
    }  # the FP32 reference gets no note
    assert (
        "  tiny-int8-drop: INT8 executed as simulated in float: Q/DQ left unfused (x86_64"
        in format_table([result])
    )
    fused = run_check(
        parse_check("f", dict(table, int8_kernels="fused"), "deploy.toml", tmp_path), "here"
    )
    assert fused.details["int8_execution"]["model"].startswith(
        "executed as ONNX Runtime's Q/DQ fusion on (int8_kernels = fused"
    )
    with pytest.raises(
        GlimmerError,
        match="key 'checks.f.int8_kernels' must be one of auto, fused, simulated, "
        "got 'simulate' \\(did you mean 'simulated'\\?\\)",
    ):
        parse_check("f", dict(table, int8_kernels="simulate"), "deploy.toml", tmp_path)
