"""glimmer-doctor: the on-target acceptance check, and the first command to run on the drone.

    glimmer-doctor [--out DIR] [--model ONNX] [--iters N] [--warmup N] [--require-tensorrt]

In order, saying plainly what ran where:

1. the platform (probes.py): L4T / JetPack (``/etc/nv_tegra_release``, else the
   ``nvidia-l4t-core`` package), Python, numpy, OpenCV and its GStreamer support, ONNX Runtime and
   its execution providers, TensorRT (its version, or why it cannot build here), the CUDA driver
   and runtime (cuda-python or pycuda), the GPU and its compute capability, the power mode
   (``nvpmodel -q``, ``jetson_clocks --show``) and the cameras (``/dev/video*``; CSI where OpenCV
   has GStreamer and ``nvarguscamerasrc`` exists);
2. the reference model, ``data/reference.onnx`` (a tiny GlimmerNet classifier with our metadata and
   PyTorch's outputs on the check inputs recorded in it), in ONNX Runtime's CPU provider, compared
   with those recorded outputs (checks.py);
3. where TensorRT and a GPU exist: FP32 and FP16 engines built from it by glimmer-export's own
   engine step, each compared with ONNX Runtime (with the recorded outputs where ONNX Runtime is
   absent) the way Polygraphy compares: an element fails only when it exceeds both ``atol`` and
   ``rtol`` (relative to the reference output); tolerances and errors are reported side by side;
4. latency of each in trtexec's vocabulary (core/timing.py), batch 1, copies included;
5. one JSON and one markdown report in ``--out`` (default ``doctor/``), each written atomically
   (report.py).

The command itself, its exit status and ``--require-tensorrt`` live in cli.py.

The inputs are integer patterns computed here (gradients, a checkerboard, rings, hashed noise): no
random generator, no OpenCV, bit-identical on every machine, so the recorded outputs stay valid.
Regenerate the reference model in the dev install (torch): ``python tests/runtime/tools/
test_doctor.py`` (``make_reference`` there; a test checks the shipped file against it).
"""

from glimmer.runtime.tools.doctor.cli import doctor, entry, main

__all__ = ["doctor", "entry", "main"]
