"""glimmer-doctor's reports: the platform rows, the markdown report, the console summary, and
the JSON + markdown files, each written atomically.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from glimmer.runtime.core.files import atomic_write_text

REPORT_JSON, REPORT_MD = "doctor.json", "doctor.md"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value else f"{value:.{digits}f}"
    return str(value)


def platform_lines(p: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(what, found) rows for the console and the markdown report."""
    j = p["jetson"]
    if j["l4t"]:
        jetpack = j["jetpack"] or "not in glimmer's table"
        board = f"{j['model']}: " if j["model"] else ""
        l4t = f"{board}L4T {j['l4t']} (JetPack {jetpack}; from {j['source']})"
    else:
        l4t = j["reason"]
    cv = p["opencv"]
    opencv = (
        f"{cv['version']} (GStreamer: {'yes' if cv.get('gstreamer') else 'no'})"
        if cv["available"]
        else f"not installed ({cv['reason']})"
    )
    ort = p["onnxruntime"]
    ort_line = (
        f"{ort['version']} ({', '.join(ort['providers'])})"
        if ort["available"]
        else f"not installed ({ort['reason']})"
    )
    trt = p["tensorrt"]
    trt_line = trt["reason"] if trt["available"] else f"not available ({trt['reason']})"
    cuda = p["cuda"]
    cuda_line = (
        f"driver {cuda.get('driver', '-')}, runtime {cuda.get('runtime', '-')} (via {cuda['via']})"
        if cuda.get("via")
        else cuda.get("reason", "-")
    )
    gpu = p["gpu"]
    gpu_line = (
        f"{gpu['name']} (compute capability {gpu['compute_capability']})"
        if gpu["available"]
        else f"none ({gpu['reason']})"
    )
    power = p["power"]
    nvp = power["nvpmodel"]
    power_line = f"nvpmodel: {nvp['mode']}" if nvp.get("mode") else nvp.get("reason", "-")
    clocks = power["jetson_clocks"]
    if "output" in clocks and "reason" not in clocks:
        power_line += "; jetson_clocks --show: in the JSON report"
    elif "output" in clocks:
        power_line += f"; jetson_clocks: {clocks['reason']}"
    cams = p["cameras"]
    v4l2 = ", ".join(
        d["device"] + (f" ({d['name']})" if d.get("name") else "") for d in cams["v4l2"]
    )
    csi = cams["csi"]
    csi_line = "CSI: csi://0 (nvarguscamerasrc)" if csi["usable"] else f"CSI: no ({csi['reason']})"
    return [
        ("L4T / JetPack", l4t),
        ("system", f"{p['system']} {p['machine']}"),
        ("Python", f"{p['python']['version']} ({p['python']['executable']})"),
        ("numpy", p["numpy"]),
        ("OpenCV", opencv),
        ("ONNX Runtime", ort_line),
        ("TensorRT", trt_line),
        ("CUDA", cuda_line),
        ("GPU", gpu_line),
        ("power mode", power_line),
        ("cameras", (f"V4L2: {v4l2}" if v4l2 else "V4L2: none (/dev/video*)") + f"; {csi_line}"),
    ]


def _latency_row(label: str, stats: Dict[str, Any]) -> str:
    keys = ("min_ms", "median_ms", "mean_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")
    cells = [_fmt(stats.get(k)) for k in keys] + [_fmt(stats.get("throughput_qps"), 1)]
    return f"| {label} | " + " | ".join(cells) + " |"


def _comparison_row(label: str, against: str, c: Dict[str, Any]) -> str:
    status = "PASS" if c.get("passed") else "FAIL"
    return "| {} | {} | {:g} / {:g} | {} | {} | {} | {} | {} |".format(
        label,
        against,
        c["atol"],
        c["rtol"],
        _fmt(c.get("max_absdiff")),
        _fmt(c.get("max_reldiff")),
        f"{c.get('mismatched', '-')} / {c.get('elements', '-')}",
        _fmt(c.get("top1_agreement")),
        status + (f" ({c['error']})" if c.get("error") else ""),
    )


def markdown(report: Dict[str, Any]) -> str:
    """The report for people: verdict, what ran where, platform, comparisons, latency."""
    lines = [
        "# glimmer-doctor",
        "",
        f"**{report['verdict'].upper()}** on {report['created']}: {report['ran_here']}",
        "",
    ]
    lines += [f"- {p}" for p in report["problems"]] + ([""] if report["problems"] else [])
    lines += ["## Platform", "", "| what | found |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in platform_lines(report["platform"])]
    m = report["model"]
    lines += [
        "",
        "## Model",
        "",
        f"`{m['path']}` ({m['name']}, {m['task']}, {m['input_size'][0]}x{m['input_size'][1]}, "
        f"{m['classes']} classes, sha256 {m['sha256'][:12]}); inputs: {m['inputs']}; "
        f"recorded PyTorch outputs: {'yes' if m['recorded_outputs'] else 'no'}",
        "",
        "## Outputs compared (Polygraphy-style: an element fails when beyond both atol and rtol)",
        "",
        "| run | against | atol / rtol | max abs | max rel | mismatched | top-1 agree | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ort, trt = report["onnxruntime"], report["tensorrt"]
    timed: List[str] = []
    if ort.get("vs_recorded"):
        lines.append(_comparison_row("ONNX Runtime CPU", "PyTorch (recorded)", ort["vs_recorded"]))
    if ort.get("latency_ms"):
        timed.append(_latency_row("ONNX Runtime CPU", ort["latency_ms"]))
    for e in trt.get("engines", []):
        label = f"TensorRT {e['precision']}"
        if e.get("comparison"):
            lines.append(_comparison_row(label, e["compared_with"], e["comparison"]))
        elif e.get("error"):
            lines.append(f"| {label} | - | - | - | - | - | - | FAIL ({e['error']}) |")
        if e.get("latency_ms"):
            timed.append(_latency_row(label, e["latency_ms"]))
    if not trt["ran"]:
        lines.append(f"| TensorRT | - | - | - | - | - | - | skipped: {trt['reason']} |")
    lines += [
        "",
        "## Latency (ms, batch 1, trtexec's vocabulary; TensorRT: copies in and out included)",
        "",
        "| run | min | median | mean | p90 | p95 | p99 | max | qps |",
        "|---|---|---|---|---|---|---|---|---|",
    ] + (timed or ["| - | nothing ran | | | | | | | |"])
    for e in trt.get("engines", []):
        if e.get("built"):
            lines.append(
                f"\nTensorRT {e['precision']} engine: {e['engine_bytes']:,} bytes, built in "
                f"{e['build_seconds']} s by TensorRT {e['tensorrt_version']} on {e['gpu']} "
                f"(sm {e['compute_capability']})"
            )
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # "nan" / "inf": JSON has no such numbers
    return value


def write_reports(report: Dict[str, Any], out: Path) -> Tuple[Path, Path]:
    """``doctor.json`` and ``doctor.md`` in ``out``, each written atomically."""
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    atomic_write_text(json_path, json.dumps(_jsonable(report), indent=2, sort_keys=True) + "\n")
    atomic_write_text(md_path, markdown(report))
    return json_path, md_path


def mismatch(against: str, c: Dict[str, Any]) -> str:
    """One line on how a comparison with ``against`` failed (the problems list)."""
    if c.get("error"):
        return f"output {c['error']} from {against}"
    return (
        f"{c['mismatched']} of {c['elements']} outputs differ from {against} beyond atol "
        f"{c['atol']:g} and rtol {c['rtol']:g} (max abs {c['max_absdiff']:.3g}, max rel "
        f"{c['max_reldiff']:.3g})"
    )


def summary_lines(report: Dict[str, Any], paths: Tuple[Path, Path]) -> List[str]:
    """What the console shows: the platform, one line per run, the TensorRT line, the reports."""
    ran_trt = report["tensorrt"]["ran"]
    lines = [
        f"{k:<14} {v}"
        for k, v in platform_lines(report["platform"])
        if ran_trt or k != "TensorRT"  # said once, on the line of its own below
    ]
    m = report["model"]
    lines.append(
        f"{'model':<14} {m['path']} ({m['name']}, {m['input_size'][0]}x{m['input_size'][1]}, "
        f"{m['classes']} classes)"
    )
    ort, trt = report["onnxruntime"], report["tensorrt"]
    if ort["ran"]:
        lines.append(
            _run_line("ONNX Runtime CPU", ort, ort.get("vs_recorded"), "PyTorch (recorded)")
        )
    else:
        lines.append(f"ONNX Runtime: not available ({ort['reason']}): its checks skipped")
    if trt["ran"]:
        for e in trt["engines"]:
            lines.append(
                _run_line(
                    f"TensorRT {e['precision']}", e, e.get("comparison"), e.get("compared_with")
                )
            )
    else:
        lines.append(f"TensorRT: not available ({trt['reason']}): engine checks skipped")
    lines.append(f"{report['verdict'].upper()}: {report['ran_here']}")
    lines.append(f"report: {paths[0]}, {paths[1]}")
    return lines


def _run_line(label: str, run: Dict[str, Any], c: Optional[Dict[str, Any]], against: Any) -> str:
    if run.get("error"):
        return f"{label}: FAIL: {run['error']}"
    parts = [label + ":"]
    if c is not None:
        parts.append(
            f"{'PASS' if c['passed'] else 'FAIL'} vs {against} (max abs {c['max_absdiff']:.2g}, "
            f"atol {c['atol']:g}, rtol {c['rtol']:g})"
        )
    else:
        parts.append("ran (nothing to compare with)")
    lat = run.get("latency_ms") or {}
    if lat.get("count"):
        parts.append(f"latency median {lat['median_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms")
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:])
