"""Engine builder and engine cache, driven against the FAKE tensorrt module
(tests/helpers/fake_tensorrt.py).

These tests prove our version handling, sidecars, cache keying and error messages per TensorRT API
generation. They do not prove that a real engine builds: no real TensorRT or GPU is used here.
"""

import hashlib
import json
import sys
import zipfile

import numpy as np
import pytest
from fake_tensorrt import (
    GENERATIONS,
    PLAN_MAGIC,
    FakeCudaRuntime,
    install_fake_cuda,
    install_fake_tensorrt,
    make_fake_tensorrt,
    tensorrt_stubs_wheel,
    tiny_meta,
    write_tiny_onnx,
)

from glimmer.runtime.backends.trt import build as trt_build
from glimmer.runtime.backends.trt import compat as trt_compat
from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import sha256_file
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.onnx_meta import read_onnx_metadata

ALL = sorted(GENERATIONS)
WEAK = [g for g in ALL if GENERATIONS[g]["precision_flags"]]


@pytest.fixture
def onnx_file(tmp_path):
    return write_tiny_onnx(tmp_path / "tiny.onnx")


def quiet(_msg):
    pass


def build(tmp_path, onnx_path, precision="fp32", batch=1, name="tiny", **kw):
    engine = tmp_path / f"{name}.{precision}.engine"
    return engine, trt_build.build_engine(
        onnx_path, engine, precision, meta=tiny_meta(batch), log=quiet, **kw
    )


def test_onnx_metadata_reader_agrees_with_the_onnx_package(tmp_path):
    import onnx

    path = write_tiny_onnx(tmp_path / "m.onnx")
    props = read_onnx_metadata(path)
    assert props == {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert trt_build.onnx_meta(path) == tiny_meta(1)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xff\xff")
    with pytest.raises(GlimmerError, match="not an ONNX model"):
        trt_build.onnx_meta(junk)


@pytest.mark.parametrize("generation", ALL)
def test_build_fp32_sidecar_with_fake_tensorrt(
    generation, tmp_path, monkeypatch, fake_cuda, onnx_file
):
    trt = install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    engine, sidecar = build(tmp_path, onnx_file)
    assert engine.read_bytes().startswith(PLAN_MAGIC)
    assert sidecar == trt_build.read_sidecar(engine)
    assert sidecar["engine_sha256"] == sha256_file(engine)
    assert sidecar["onnx_sha256"] == sha256_file(onnx_file)
    assert sidecar["tensorrt_version"] == trt.__version__
    assert (sidecar["gpu_name"], sidecar["compute_capability"]) == ("Orin (fake)", "8.7")
    assert sidecar["inputs"] == [{"name": "images", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert sidecar["outputs"] == [{"name": "logits", "shape": [1, 4], "dtype": "float32"}]
    opts = sidecar["builder_options"]
    assert opts["workspace_api"] == "set_memory_pool_limit"
    # EXPLICIT_BATCH is set wherever the enum member exists (8.x needs it, 10 ignores it, 11 lacks
    # it).
    assert opts["explicit_batch_flag"] is GENERATIONS[generation]["explicit_flag"]
    assert opts["flags"] == [] and opts["typing"] == ("weak" if generation in WEAK else "strong")
    assert ModelMeta.from_dict(sidecar["meta"]) == tiny_meta(1)
    assert trt.stats["builds"] == 1
    # trt.nptype is never called: on the fake 8.4 / 8.5 it raises AttributeError, as with numpy
    # >= 1.24 on the real ones.
    assert trt.stats["nptype_calls"] == 0


def test_create_network_on_11_does_not_touch_the_removed_flag(monkeypatch, fake_cuda):
    trt = install_fake_tensorrt(monkeypatch, "11.4", fake_cuda)
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    builder = trt_compat.create_builder(trt, trt_compat.make_logger(trt))
    network, info = trt_compat.create_network(trt, builder)
    assert network.flags == 0 and info == {"explicit_batch_flag": False}


def test_fake_10_has_no_max_workspace_size(monkeypatch, fake_cuda):
    """The fake really lacks what 10.x lacks, so the builds above prove we never touch it."""
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    config = trt.Builder(None).create_builder_config()
    with pytest.raises(AttributeError):
        config.max_workspace_size = 1
    assert not hasattr(trt.Builder, "build_engine")


@pytest.mark.parametrize("generation", WEAK)
def test_fp16_sets_the_builder_flag_before_11_with_fake_tensorrt(
    generation, tmp_path, monkeypatch, fake_cuda, onnx_file
):
    install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    engine, sidecar = build(tmp_path, onnx_file, "fp16")
    assert sidecar["builder_options"]["flags"] == ["FP16"]
    assert json.loads(engine.read_bytes()[len(PLAN_MAGIC) :])["flags"] == ["FP16"]
    assert sidecar["meta"]["precision"] == "fp16"


def test_fp16_on_11_needs_fp16_types_in_the_onnx_with_fake_tensorrt(
    tmp_path, monkeypatch, fake_cuda, onnx_file
):
    install_fake_tensorrt(monkeypatch, "11.4", fake_cuda)
    with pytest.raises(GlimmerError, match="strongly typed.*no FP16 tensors"):
        build(tmp_path, onnx_file, "fp16")
    assert not (tmp_path / "tiny.fp16.engine").exists()
    half = write_tiny_onnx(tmp_path / "half.onnx", variant="fp16")
    _, sidecar = build(tmp_path, half, "fp16", name="half")
    opts = sidecar["builder_options"]
    assert (opts["flags"], opts["typing"], opts["fp16_tensors"]) == ([], "strong", True)


@pytest.mark.parametrize("generation", ALL)
def test_int8_needs_qdq_or_a_calibrator_with_fake_tensorrt(
    generation, tmp_path, monkeypatch, fake_cuda, onnx_file
):
    install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    with pytest.raises(GlimmerError, match="Q/DQ"):
        build(tmp_path, onnx_file, "int8")
    qdq = write_tiny_onnx(tmp_path / "q.onnx", variant="qdq")
    _, sidecar = build(tmp_path, qdq, "int8", name="q")
    want = ["FP16", "INT8"] if generation in WEAK else []
    assert sidecar["builder_options"]["flags"] == want
    assert sidecar["builder_options"]["qdq"] is True


def pascal(monkeypatch, generation="8.6"):
    rt = FakeCudaRuntime(name="NVIDIA GeForce GTX 1080", cc=(6, 1))
    install_fake_cuda(monkeypatch, rt)
    return rt, install_fake_tensorrt(monkeypatch, generation, rt)


def test_pascal_int8_skips_slow_fp16_with_fake_tensorrt(tmp_path, monkeypatch):
    _, trt = pascal(monkeypatch)
    qdq = write_tiny_onnx(tmp_path / "q.onnx", variant="qdq")
    _, sidecar = build(tmp_path, qdq, "int8")
    assert sidecar["builder_options"]["flags"] == ["INT8"]
    assert sidecar["compute_capability"] == "6.1"
    assert trt.stats["slow_fp16_builds"] == 0


def test_fake_pascal_has_no_fast_fp16_and_warns_when_fp16_is_forced(monkeypatch):
    """The fake is as strict as TensorRT: FP16 on sm_61 builds, slowly, with the Half2 warning."""
    _, trt = pascal(monkeypatch)
    builder = trt.Builder(None)
    assert builder.platform_has_fast_fp16 is False
    network = builder.create_network(1)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is not None
    assert trt.stats["slow_fp16_builds"] == 1 and "Half2 support requested" in trt.log[-1]


@pytest.mark.parametrize("generation", WEAK)
def test_fp16_on_pascal_is_built_and_named_fp32_with_fake_tensorrt(
    generation, tmp_path, monkeypatch, onnx_file
):
    _, trt = pascal(monkeypatch, generation)
    lines = []
    sidecar = trt_build.build_engine(
        onnx_file, tmp_path / "tiny.fp16.engine", "fp16", meta=tiny_meta(), log=lines.append
    )
    engine = tmp_path / "tiny.fp32.engine"
    assert trt_build.built_engine_path(tmp_path / "tiny.fp16.engine", sidecar) == engine
    assert engine.is_file() and not (tmp_path / "tiny.fp16.engine").exists()
    assert (sidecar["engine"], sidecar["precision"], sidecar["requested_precision"]) == (
        "tiny.fp32.engine",
        "fp32",
        "fp16",
    )
    assert sidecar["meta"]["precision"] == "fp32" and "no fast FP16" in sidecar["precision_note"]
    assert sidecar["builder_options"]["flags"] == [] and trt.stats["slow_fp16_builds"] == 0
    assert trt_build.read_sidecar(engine) == sidecar
    assert "no fast FP16" in lines[0] and "tiny.fp32.engine" in lines[0]
    # The key is an fp32 engine's key: the same engine as an fp32 request.
    _, fp32 = build(tmp_path, onnx_file, "fp32", name="plain")
    assert fp32["engine_key"] == sidecar["engine_key"]


def test_apply_precision_refuses_fp16_without_fast_fp16(monkeypatch):
    """The last guard: an FP32 engine can never get an fp16 label through apply_precision."""
    _, trt = pascal(monkeypatch)
    builder = trt.Builder(None)
    with pytest.raises(GlimmerError, match="no fast FP16.*--precision fp32"):
        trt_compat.apply_precision(
            trt,
            builder,
            builder.create_builder_config(),
            builder.create_network(1),
            "fp16",
            None,
            "m.onnx",
        )


def test_ensure_engine_on_pascal_keys_and_names_fp16_as_fp32(tmp_path, monkeypatch, onnx_file):
    _, trt = pascal(monkeypatch, "10.3")
    cache = tmp_path / "cache"
    lines = []
    engine = trt_build.ensure_engine(onnx_file, "fp16", cache, log=lines.append)
    assert engine.name.startswith("tiny.fp32.") and "asks for fp16" in lines[0]
    assert trt_build.read_sidecar(engine)["precision"] == "fp32"
    assert trt_build.ensure_engine(onnx_file, "fp32", cache, log=quiet) == engine
    assert trt_build.ensure_engine(onnx_file, "fp16", cache, log=quiet) == engine
    assert trt.stats["builds"] == 1 and sorted(p.name for p in cache.glob("*.engine")) == [
        engine.name
    ]


def test_strongly_typed_fp16_on_pascal_stays_fp16_with_fake_tensorrt(tmp_path, monkeypatch):
    """On 11 the ONNX's own FP16 types are the engine's: no flag to drop, so fp16 is the truth."""
    pascal(monkeypatch, "11.4")
    half = write_tiny_onnx(tmp_path / "half.onnx", variant="fp16")
    engine, sidecar = build(tmp_path, half, "fp16", name="half")
    assert engine.is_file() and sidecar["precision"] == "fp16"
    assert "precision_note" not in sidecar


def test_export_engine_jobs_report_what_was_built_on_pascal(tmp_path, monkeypatch, onnx_file):
    from glimmer.runtime.backends.trt import engines

    pascal(monkeypatch, "10.3")
    jobs = [{"onnx": onnx_file, "engine": tmp_path / "tiny.fp16.engine", "precision": "fp16"}]
    (built,) = engines.build_engines(
        jobs, tiny_meta(), tmp_path, dynamic_batch=False, max_batch=1, log=quiet
    )
    assert built["path"] == str(tmp_path / "tiny.fp32.engine")
    assert (built["precision"], built["requested_precision"]) == ("fp32", "fp16")
    assert list(tmp_path.glob("timing-10-3-0-30-nvidia-geforce-gtx-1080-sm61.cache"))


@pytest.mark.parametrize("generation", ["8.4", "11.4"])
def test_parser_errors_are_reported_verbatim_and_nothing_is_overwritten(
    generation, tmp_path, monkeypatch, fake_cuda, onnx_file
):
    install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    engine, _ = build(tmp_path, onnx_file)
    good = engine.read_bytes()
    bad = write_tiny_onnx(tmp_path / "bad.onnx", variant="unsupported")
    with pytest.raises(GlimmerError) as err:
        trt_build.build_engine(bad, engine, "fp32", meta=tiny_meta(), log=quiet)
    assert "In node 0 (FancyOp): UNSUPPORTED_NODE: No importer registered for op: FancyOp" in str(
        err.value
    )
    assert str(bad) in str(err.value)
    assert engine.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.onnx",
        "tiny.fp32.engine",
        "tiny.fp32.json",
        "tiny.onnx",
    ]


@pytest.mark.parametrize("generation", ["8.4", "10.3"])
def test_dynamic_batch_profile_with_fake_tensorrt(generation, tmp_path, monkeypatch, fake_cuda):
    install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    dyn = write_tiny_onnx(tmp_path / "dyn.onnx", batch=None)
    _, sidecar = build(tmp_path, dyn, batch=None, name="dyn")
    assert sidecar["shapes"]["profile"] == {
        "images": {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [4, 3, 8, 8]}
    }
    _, sidecar = build(
        tmp_path, dyn, batch=None, name="dyn2", min_batch=2, opt_batch=4, max_batch=8
    )
    assert sidecar["shapes"]["profile"]["images"]["max"] == [8, 3, 8, 8]
    assert sidecar["meta"]["batch"] is None
    with pytest.raises(GlimmerError, match="0 < min <= opt <= max"):
        build(tmp_path, dyn, batch=None, name="dyn3", min_batch=4, opt_batch=2)
    fixed = write_tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    with pytest.raises(GlimmerError, match="fixed batch of 1.*--dynamic-batch"):
        build(tmp_path, fixed, batch=1, name="fixed", max_batch=8)


def test_timing_cache_is_saved_and_reused_with_fake_tensorrt(
    tmp_path, monkeypatch, fake_cuda, onnx_file
):
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    cache = tmp_path / "timing.cache"
    keyed = tmp_path / "timing-10-3-0-30-orin-fake-sm87.cache"
    _, first = build(tmp_path, onnx_file, timing_cache=cache)
    assert not cache.exists()  # the name given is a base: the file is keyed by version and GPU
    assert (
        keyed.read_bytes().startswith(b"FTC") and first["builder_options"]["timing_cache"] is False
    )
    _, second = build(tmp_path, onnx_file, name="again", timing_cache=cache)
    assert second["builder_options"]["timing_cache"] is True and trt.stats["timing_cache_hits"] == 1
    keyed.write_bytes(b"garbage")
    lines = []
    trt_build.build_engine(
        onnx_file,
        tmp_path / "third.engine",
        "fp32",
        meta=tiny_meta(),
        timing_cache=cache,
        log=lines.append,
    )
    assert any("is unusable" in line for line in lines)
    assert keyed.read_bytes().startswith(b"FTC")


def test_timing_caches_are_kept_per_gpu_and_tensorrt_version_with_fake_tensorrt(
    tmp_path, monkeypatch, fake_cuda, onnx_file
):
    """One folder shared by two GPUs and two TensorRT versions (the export path's out folder):
    each gets its own file, and no build starts from another's timings."""
    cache = tmp_path / "timing.cache"
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    build(tmp_path, onnx_file, timing_cache=cache)
    fake_cuda.name, fake_cuda.cc = "Xavier (fake)", (7, 2)
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    _, xavier = build(tmp_path, onnx_file, name="xavier", timing_cache=cache)
    trt86 = install_fake_tensorrt(monkeypatch, "8.6", fake_cuda)
    _, old = build(tmp_path, onnx_file, name="old", timing_cache=cache)
    assert sorted(p.name for p in tmp_path.glob("timing*")) == [
        "timing-10-3-0-30-orin-fake-sm87.cache",
        "timing-10-3-0-30-xavier-fake-sm72.cache",
        "timing-8-6-2-3-xavier-fake-sm72.cache",
    ]
    assert xavier["builder_options"]["timing_cache"] is False
    assert old["builder_options"]["timing_cache"] is False
    assert trt.stats["foreign_timing_hits"] == trt86.stats["foreign_timing_hits"] == 0


def test_another_gpus_timing_cache_is_refused_not_used_with_fake_tensorrt(
    tmp_path, monkeypatch, fake_cuda, onnx_file
):
    """A cache copied under this GPU's name: ignore_mismatch=False makes TensorRT refuse it, and
    the build starts a new one (with True, the fake, like TensorRT, would use Orin's timings)."""
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    build(tmp_path, onnx_file, timing_cache=tmp_path / "timing.cache")
    orin = tmp_path / "timing-10-3-0-30-orin-fake-sm87.cache"
    fake_cuda.name, fake_cuda.cc = "Xavier (fake)", (7, 2)
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    (tmp_path / "timing-10-3-0-30-xavier-fake-sm72.cache").write_bytes(orin.read_bytes())
    lines = []
    sidecar = trt_build.build_engine(
        onnx_file,
        tmp_path / "x.engine",
        "fp32",
        meta=tiny_meta(),
        timing_cache=tmp_path / "timing.cache",
        log=lines.append,
    )
    assert sidecar["builder_options"]["timing_cache"] is False
    assert any("made by another GPU or TensorRT version" in line for line in lines)
    assert "Timing cache mismatch" in trt.log[0] and trt.stats["foreign_timing_hits"] == 0
    config = trt.Builder(None).create_builder_config()
    assert config.set_timing_cache(config.create_timing_cache(orin.read_bytes()), True) is True


def test_no_gpu_is_one_clear_error_with_fake_tensorrt(tmp_path, monkeypatch, onnx_file, capsys):
    rt = FakeCudaRuntime(devices=0)
    install_fake_cuda(monkeypatch, rt)
    trt = install_fake_tensorrt(monkeypatch, "10.3", rt)
    with pytest.raises(GlimmerError, match="^no CUDA device"):
        build(tmp_path, onnx_file)
    assert "CUDA initialization failure with error: 100" in trt.log[0]
    ok, reason = trt_build.tensorrt_status()
    assert not ok and reason.startswith("no CUDA device")
    assert not list(tmp_path.glob("*.engine"))
    # Through the command-line plumbing: one line, exit code 1, no traceback.
    code = run_cli("glimmer-export", lambda argv: build(tmp_path, onnx_file) and 0, [])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith(
        "glimmer-export: error: no CUDA device: TensorRT could not create its Builder"
    )


def test_old_driver_is_reported_as_such_not_as_no_gpu_with_fake_tensorrt(
    tmp_path, monkeypatch, onnx_file
):
    """A JetPack 5 driver (CUDA 11.4) under a CUDA 12 cuda-python / TensorRT: error 35."""
    rt = FakeCudaRuntime(driver_version=11040, runtime_version=12060)
    install_fake_cuda(monkeypatch, rt)
    trt = install_fake_tensorrt(monkeypatch, "10.3", rt)
    with pytest.raises(GlimmerError) as err:
        build(tmp_path, onnx_file)
    message = str(err.value)
    assert message.startswith("TensorRT could not create its Builder")
    assert "NVIDIA driver is too old" in message and "driver supports CUDA 11.4" in message
    assert "CUDA 12.6" in message and "update the driver" in message
    assert "no CUDA device" not in message and "error: 35" in trt.log[0]
    ok, reason = trt_build.tensorrt_status()
    assert not ok and "NVIDIA driver is too old" in reason


def test_no_driver_at_all_is_still_no_cuda_device_with_fake_tensorrt(
    tmp_path, monkeypatch, onnx_file
):
    """Error 35 with driver version 0 (what this GPU-less machine's real cuda-python says)."""
    rt = FakeCudaRuntime(driver_version=0)
    install_fake_cuda(monkeypatch, rt)
    install_fake_tensorrt(monkeypatch, "10.3", rt)
    with pytest.raises(GlimmerError, match="^no CUDA device: TensorRT could not create"):
        build(tmp_path, onnx_file)


def test_status_reports_usable_and_missing_tensorrt(monkeypatch, fake_cuda):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    assert trt_build.tensorrt_status() == (
        True,
        "TensorRT 10.3.0.30 on Orin (fake) (sm_87) via cuda-python",
    )
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    ok, reason = trt_build.tensorrt_status()
    assert (
        not ok
        and reason.startswith("TensorRT is not installed")
        and "--backend onnxruntime" in reason
    )


def test_engine_key_changes_with_every_component():
    base = dict(
        onnx_sha256="a" * 64,
        trt_version="10.3.0.30",
        gpu_name="Orin",
        compute_capability=(8, 7),
        precision="fp16",
        shapes={"batch": [1, 1, 1]},
        builder_options={"workspace_bytes": 1},
    )
    key = trt_build.engine_key(**base)
    assert key == trt_build.engine_key(**base) and len(key) == 64
    changes = dict(
        onnx_sha256="b" * 64,
        trt_version="8.6.2.3",
        gpu_name="Xavier",
        compute_capability=(7, 2),
        precision="int8",
        shapes={"batch": [1, 1, 4]},
        builder_options={"workspace_bytes": 2},
    )
    keys = {trt_build.engine_key(**dict(base, **{k: v})) for k, v in changes.items()}
    assert len(keys) == len(changes) and key not in keys


def test_ensure_engine_builds_once_then_reuses_with_fake_tensorrt(
    tmp_path, monkeypatch, fake_cuda, onnx_file
):
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    cache = tmp_path / "cache"
    lines = []
    first = trt_build.ensure_engine(onnx_file, "fp16", cache, log=lines.append)
    assert (
        first.parent == cache and first.name.startswith("tiny.fp16.") and trt.stats["builds"] == 1
    )
    assert list(cache.glob("timing-10-3-0-30-orin-fake-sm87.cache"))
    assert trt_build.ensure_engine(onnx_file, "fp16", cache, log=lines.append) == first
    assert trt.stats["builds"] == 1 and lines[-1] == f"using cached engine {first}"
    other = trt_build.ensure_engine(onnx_file, "fp32", cache, log=quiet)
    assert other != first and trt.stats["builds"] == 2


def test_ensure_engine_rebuilds_a_damaged_or_orphaned_engine_with_fake_tensorrt(
    tmp_path, monkeypatch, fake_cuda, onnx_file
):
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    cache = tmp_path / "cache"
    engine = trt_build.ensure_engine(onnx_file, "fp16", cache, log=quiet)
    engine.write_bytes(engine.read_bytes() + b"tampered")
    lines = []
    assert trt_build.ensure_engine(onnx_file, "fp16", cache, log=lines.append) == engine
    assert "does not match its recorded sha256" in lines[0] and trt.stats["builds"] == 2
    trt_build.sidecar_path(engine).unlink()
    lines.clear()
    trt_build.ensure_engine(onnx_file, "fp16", cache, log=lines.append)
    assert "sidecar invalid" in lines[0] and trt.stats["builds"] == 3
    assert (
        trt_build.read_sidecar(engine)["engine_sha256"]
        == hashlib.sha256(engine.read_bytes()).hexdigest()
    )


def test_ensure_engine_keys_by_gpu_and_tensorrt_version_with_fake_tensorrt(
    tmp_path, monkeypatch, fake_cuda, onnx_file
):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    cache = tmp_path / "cache"
    orin = trt_build.ensure_engine(onnx_file, "fp16", cache, log=quiet)
    fake_cuda.name = "Xavier (fake)"
    xavier = trt_build.ensure_engine(onnx_file, "fp16", cache, log=quiet)
    install_fake_tensorrt(monkeypatch, "8.6", fake_cuda)
    trt86 = trt_build.ensure_engine(onnx_file, "fp16", cache, log=quiet)
    assert len({orin, xavier, trt86}) == 3
    assert trt_build.read_sidecar(trt86)["tensorrt_version"] == "8.6.2.3"


def test_ensure_engine_unwritable_cache_says_where(tmp_path, monkeypatch, fake_cuda, onnx_file):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(GlimmerError) as err:
        trt_build.ensure_engine(onnx_file, "fp16", blocker / "engines", log=quiet)
    assert str(err.value).startswith(f"engine cache folder {blocker / 'engines'} is not writable")
    assert "GLIMMER_ENGINE_CACHE" in str(err.value)


def test_ensure_engine_uses_the_environment_cache_folder(
    tmp_path, monkeypatch, fake_cuda, onnx_file
):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    monkeypatch.setenv("GLIMMER_ENGINE_CACHE", str(tmp_path / "env-cache"))
    assert trt_build.ensure_engine(onnx_file, "fp32", log=quiet).parent == tmp_path / "env-cache"


def test_ensure_engine_needs_our_metadata(tmp_path, monkeypatch, fake_cuda):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    bare = write_tiny_onnx(tmp_path / "bare.onnx", meta=False)
    with pytest.raises(GlimmerError, match="bare.onnx: no model metadata"):
        trt_build.ensure_engine(bare, "fp16", tmp_path / "c", log=quiet)
    with pytest.raises(GlimmerError, match="precision must be one of"):
        trt_build.ensure_engine(bare, "fp8", tmp_path / "c", log=quiet)


def test_read_sidecar_errors_name_the_file(tmp_path):
    engine = tmp_path / "m.fp16.engine"
    engine.write_bytes(b"x")
    with pytest.raises(GlimmerError, match=r"m\.fp16\.json: engine sidecar not found"):
        trt_build.read_sidecar(engine)
    (tmp_path / "m.fp16.json").write_text("{not json")
    with pytest.raises(GlimmerError, match="unreadable engine sidecar"):
        trt_build.read_sidecar(engine)
    (tmp_path / "m.fp16.json").write_text(json.dumps({"format": "glimmer-tensorrt-engine"}))
    with pytest.raises(GlimmerError, match="lacks key 'engine_sha256'"):
        trt_build.read_sidecar(engine)


@pytest.mark.parametrize("generation", ALL)
def test_fake_nptype_is_as_strict_as_the_real_one(generation, fake_cuda):
    """8.4 / 8.5.2 build nptype's table with np.bool (AttributeError on numpy 1.24-1.26); every
    version raises TypeError for a type numpy lacks."""
    trt = make_fake_tensorrt(generation, fake_cuda)
    if GENERATIONS[generation]["nptype_np_bool"]:
        with pytest.raises(AttributeError, match="np.bool"):
            trt.nptype(trt.DataType.FLOAT)
    else:
        assert trt.nptype(trt.DataType.FLOAT) is np.float32
        with pytest.raises(TypeError):
            trt.nptype(trt.DataType.FP8)
    assert hasattr(trt.DataType, "INT64") is (generation in ("10.3", "11.4"))


@pytest.mark.parametrize("generation", ALL)
def test_numpy_dtype_maps_by_name_without_nptype(generation, fake_cuda):
    trt = make_fake_tensorrt(generation, fake_cuda)
    got = {m: trt_compat.numpy_dtype(trt, trt.DataType[m]).name for m in ("FLOAT", "HALF", "INT8")}
    assert got == {"FLOAT": "float32", "HALF": "float16", "INT8": "int8"}
    assert trt_compat.numpy_dtype(trt, trt.DataType.BOOL) == np.bool_
    assert trt.stats["nptype_calls"] == 0
    if hasattr(trt.DataType, "BF16"):
        with pytest.raises(
            GlimmerError, match="^TensorRT tensor type BF16 has no numpy equivalent"
        ):
            trt_compat.numpy_dtype(trt, trt.DataType.BF16)


def stub_folders(tmp_path):
    """An empty ``tensorrt`` folder, and TensorRT's real stubs when the wheel is here."""
    empty = tmp_path / "empty"
    (empty / "tensorrt").mkdir(parents=True)
    (empty / "tensorrt" / "__init__.pyi").write_text("def nptype(t): ...\n")
    folders = [empty]
    wheel = tensorrt_stubs_wheel()
    if wheel is not None:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp_path / "stubs")
        folders.append(tmp_path / "stubs")
    return folders


def test_tensorrt_without_bindings_is_not_installed(tmp_path, monkeypatch):
    """A ``tensorrt`` folder without bindings (the stubs wheel, a half-removed install) imports as
    an empty namespace package: it is reported as TensorRT missing, and auto never picks it."""
    from glimmer.runtime.backends import factory

    for folder in stub_folders(tmp_path):
        with monkeypatch.context() as m:
            m.delitem(sys.modules, "tensorrt", raising=False)
            m.syspath_prepend(str(folder))
            assert factory._installed("tensorrt") is False
            with pytest.raises(GlimmerError) as err:
                trt_compat.import_tensorrt()
            message = str(err.value)
            assert message.startswith(
                f"TensorRT is not installed (found only the package at {folder / 'tensorrt'}"
            )
            assert "type stubs or a broken install" in message and "pypi.nvidia.com" in message
            assert factory._installed("tensorrt") is False  # now in sys.modules: still not
            ok, reason = trt_build.tensorrt_status()
            assert not ok and reason == message
