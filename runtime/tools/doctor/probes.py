"""glimmer-doctor's platform probes: L4T / JetPack, Python, numpy, OpenCV, ONNX Runtime,
TensorRT, CUDA, the GPU, the power mode and the cameras, with the parsers of what they print.

Every probe reports what it found or why not; none raises. The paths read are module constants so
tests can point them at files.
"""

import glob
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from glimmer.runtime.backends.trt import engines as trt_engines

# Where the platform is read from (module constants so tests can point them at files).
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
DEV = Path("/dev")
SYS_V4L = Path("/sys/class/video4linux")
GST_PLUGIN_DIRS = (
    "/usr/lib/aarch64-linux-gnu/gstreamer-1.0",
    "/usr/lib/x86_64-linux-gnu/gstreamer-1.0",
)
#: L4T release -> JetPack, from NVIDIA's JetPack archive; anything else is reported as unknown
JETPACK = {
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
}


# -- small helpers ------------------------------------------------------------------------------
def _which(name: str) -> Optional[str]:
    return shutil.which(name)


def _run(cmd: Sequence[str], timeout: float = 15.0) -> Tuple[int, str]:
    """(exit code, stdout + stderr) of ``cmd``; (127, why) when it cannot be started."""
    try:
        done = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, f"{cmd[0]}: {exc}"
    return done.returncode, (done.stdout + done.stderr).strip()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _why(exc: BaseException) -> str:
    return _first_line(str(exc)) or type(exc).__name__


# -- the platform -------------------------------------------------------------------------------
def parse_nv_tegra_release(text: str) -> Optional[str]:
    """``# R35 (release), REVISION: 4.1, ...`` -> ``35.4.1``; None when unreadable."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not match:
        return None
    return f"{match.group(1)}.{match.group(2).rstrip('.')}"


def parse_l4t_core_version(text: str) -> Optional[str]:
    """The ``nvidia-l4t-core`` package version ``35.4.1-20230801124926`` -> ``35.4.1``."""
    match = re.match(r"\s*(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def jetson_info() -> Dict[str, Any]:
    """L4T release and JetPack, from /etc/nv_tegra_release or the nvidia-l4t-core package."""
    info: Dict[str, Any] = {"l4t": None, "jetpack": None, "source": None, "model": None}
    try:
        raw = DEVICE_TREE_MODEL.read_bytes().decode("utf-8", "replace").strip("\x00 \n")
        info["model"] = raw or None
    except OSError:
        pass
    try:
        release = parse_nv_tegra_release(NV_TEGRA_RELEASE.read_text(errors="replace"))
        if release:
            info.update(l4t=release, source=str(NV_TEGRA_RELEASE))
    except OSError:
        pass
    if info["l4t"] is None and _which("dpkg-query"):
        code, out = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-l4t-core"])
        version = parse_l4t_core_version(out) if code == 0 else None
        if version:
            info.update(l4t=version, source="dpkg nvidia-l4t-core")
    if info["l4t"] is None:
        info["reason"] = f"not a Jetson: no {NV_TEGRA_RELEASE} and no nvidia-l4t-core package" + (
            f" ({info['model']})" if info["model"] else ""
        )
    else:
        info["jetpack"] = JETPACK.get(info["l4t"])
    return info


def _module_version(name: str) -> Dict[str, Any]:
    try:
        module = __import__(name)
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, never raised
        return {"available": False, "reason": _why(exc)}
    return {"available": True, "version": str(getattr(module, "__version__", "unknown"))}


def opencv_info() -> Dict[str, Any]:
    info = _module_version("cv2")
    if info["available"]:
        import cv2

        try:
            match = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
        except Exception:  # noqa: BLE001 - a stub or broken build
            match = None
        info["gstreamer"] = bool(match) and match.group(1).upper() == "YES"
    return info


def onnxruntime_info() -> Dict[str, Any]:
    info = _module_version("onnxruntime")
    if info["available"]:
        import onnxruntime

        info["providers"] = list(onnxruntime.get_available_providers())
    return info


def tensorrt_info() -> Dict[str, Any]:
    """(usable, reason) from glimmer-export's engine step, and the version when it imports."""
    try:
        usable, reason = trt_engines.tensorrt_status()
    except Exception as exc:  # noqa: BLE001 - bindings fail in their own ways
        usable, reason = False, f"TensorRT failed to start ({_why(exc)})"
    module = sys.modules.get("tensorrt")
    version = str(getattr(module, "__version__", "")) or None
    return {"available": bool(usable), "version": version, "reason": reason}


def _cuda_version(value: int) -> str:
    if value <= 0:
        return "none (no NVIDIA driver loaded)"
    return f"{value // 1000}.{(value % 1000) // 10}"


def cuda_info() -> Dict[str, Any]:
    """CUDA driver and runtime versions through cuda-python, else pycuda."""
    try:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python
    except Exception as exc:  # noqa: BLE001
        cudart, cuda_python_why = None, _why(exc)
    if cudart is not None:
        info: Dict[str, Any] = {"via": "cuda-python"}
        for key, call in (("driver", "cudaDriverGetVersion"), ("runtime", "cudaRuntimeGetVersion")):
            try:
                err, value = getattr(cudart, call)()
                info[key] = _cuda_version(int(value)) if int(err) == 0 else f"error {int(err)}"
            except Exception as exc:  # noqa: BLE001 - older bindings, fakes
                info[key] = f"unknown ({_why(exc)})"
        return info
    try:
        import pycuda.driver as driver
    except Exception as exc:  # noqa: BLE001
        return {
            "via": None,
            "reason": f"no CUDA Python binding: cuda-python ({cuda_python_why}), "
            f"pycuda ({_why(exc)})",
        }
    info = {"via": "pycuda"}
    try:
        info["driver"] = _cuda_version(int(driver.get_driver_version()))
        info["runtime"] = ".".join(str(v) for v in driver.get_version()[:2])
    except Exception as exc:  # noqa: BLE001
        info["reason"] = _why(exc)
    return info


def gpu_info() -> Dict[str, Any]:
    """The CUDA device's name and compute capability, opened as the TensorRT backend opens it."""
    try:
        from glimmer.runtime.backends.trt import cuda as cuda_mem

        cuda = cuda_mem.open_cuda()
    except Exception as exc:  # noqa: BLE001 - no binding, no device
        return {"available": False, "reason": _why(exc)}
    try:
        major, minor = cuda.compute_capability()
        return {
            "available": True,
            "name": cuda.device_name(),
            "compute_capability": f"{major}.{minor}",
            "via": cuda.name,
        }
    except Exception as exc:  # noqa: BLE001
        return {"available": False, "reason": _why(exc)}
    finally:
        cuda.close()


def power_info() -> Dict[str, Any]:
    """``nvpmodel -q`` and ``jetson_clocks --show`` where installed (Jetson only)."""
    info: Dict[str, Any] = {}
    if _which("nvpmodel"):
        code, out = _run(["nvpmodel", "-q"])
        match = re.search(r"NV Power Mode:\s*(.+)", out)
        info["nvpmodel"] = {
            "exit_code": code,
            "mode": match.group(1).strip() if match else None,
            "output": out[:2000],
        }
    else:
        info["nvpmodel"] = {"mode": None, "reason": "nvpmodel not found (not a Jetson)"}
    if _which("jetson_clocks"):
        code, out = _run(["jetson_clocks", "--show"])
        info["jetson_clocks"] = {"exit_code": code, "output": out[:4000]}
        if code != 0:
            info["jetson_clocks"]["reason"] = (
                _first_line(out) or f"exit {code}"
            ) + " (jetson_clocks --show usually needs sudo)"
    else:
        info["jetson_clocks"] = {"reason": "jetson_clocks not found (not a Jetson)"}
    return info


def _natural(path: str) -> Tuple[str, int]:
    match = re.match(r"(.*?)(\d+)$", path)
    return (match.group(1), int(match.group(2))) if match else (path, -1)


def camera_info(gstreamer: Optional[bool]) -> Dict[str, Any]:
    """V4L2 devices (``/dev/video*`` with their driver names) and whether CSI can be opened."""
    v4l2 = []
    for device in sorted(glob.glob(str(DEV / "video*")), key=_natural):
        entry = {"device": device, "source": f"v4l2://{device}"}  # glimmer-run --source
        try:
            entry["name"] = (SYS_V4L / Path(device).name / "name").read_text().strip()
        except OSError:
            pass
        v4l2.append(entry)
    csi: Dict[str, Any] = {"usable": False}
    if gstreamer is None:
        csi["reason"] = "OpenCV is not installed"
    elif not gstreamer:
        csi["reason"] = "this OpenCV has no GStreamer (JetPack's python3-opencv has it)"
    else:
        if _which("gst-inspect-1.0"):
            present = _run(["gst-inspect-1.0", "nvarguscamerasrc"])[0] == 0
        else:
            present = any(Path(d, "libgstnvarguscamerasrc.so").is_file() for d in GST_PLUGIN_DIRS)
        csi["nvarguscamerasrc"] = present
        if present:
            csi.update(usable=True, source="csi://0")
        else:
            csi["reason"] = "GStreamer has no nvarguscamerasrc (not a Jetson, or no Argus)"
    return {"v4l2": v4l2, "csi": csi}


def platform_info() -> Dict[str, Any]:
    """Everything about this machine that decides what runs; never raises."""
    opencv = opencv_info()
    return {
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "jetson": jetson_info(),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "numpy": np.__version__,
        "opencv": opencv,
        "onnxruntime": onnxruntime_info(),
        "tensorrt": tensorrt_info(),
        "cuda": cuda_info(),
        "gpu": gpu_info(),
        "power": power_info(),
        "cameras": camera_info(opencv.get("gstreamer") if opencv["available"] else None),
    }
