"""The main job, end to end, on this machine: train -> export -> run on a clip (FPS report) ->
checks.

No real dataset can be downloaded here, so the demo trains GlimmerNet for a few epochs on synthetic
scenes (glimmer.train.synthetic) and says so: its weights are for showing the toolkit, not for use.
Artifacts land in demo/ (ignored by git); a second run reuses the trained checkpoint.
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
BIN = Path(sys.executable).parent
NOTE = (
    "NOTE: these weights were trained for a few epochs on synthetic scenes, not on AIDERv2: "
    "the predictions show the toolkit working, not a model fit for real imagery."
)


def step(title: str, *cmd: str) -> None:
    print(f"\n=== {title}\n$ {' '.join(cmd)}", flush=True)
    subprocess.run([str(BIN / cmd[0]), *cmd[1:]], check=True, cwd=str(ROOT))


def main() -> int:
    from glimmer.train.synthetic import (
        CLASSES,
        DEMO_TRAIN_FLAGS,
        make_scene_dataset,
        make_scene_video,
    )

    data, run = DEMO / "data", DEMO / "run"
    if not (data / "Test").is_dir():
        print("=== synthetic AIDERv2-layout scenes -> demo/data", flush=True)
        make_scene_dataset(data, {"Train": 64, "Val": 16, "Test": 16}, size=96, seed=22)
    if not (run / "best.pt").is_file():
        shutil.rmtree(run, ignore_errors=True)
        step(
            "train GlimmerNet (paper recipe, 10 epochs at 96 px)",
            "glimmer-train",
            str(data),
            "--out",
            str(run),
            *DEMO_TRAIN_FLAGS,
            "--workers",
            "2",
        )
    step(
        "export: ONNX (lowered dilations, BN folded) + INT8 Q/DQ within 0.01 weighted F1 on Val",
        "glimmer-export",
        str(run / "best.pt"),
        "--out",
        str(DEMO),
        "--name",
        "glimmernet",
        "--int8",
        "--calib",
        str(data / "Train"),
        "--val",
        str(data / "Val"),
        "--int8-max-drop",
        "0.01",
    )
    clip = DEMO / "clip.mp4"
    if not clip.is_file():
        make_scene_video(
            clip, [c for c in CLASSES for _ in range(2)], frames_per_label=15, size=(640, 360)
        )
    print("\n" + NOTE, flush=True)
    step(
        "run on a 120-frame clip (deploy.toml supplies model, source and thresholds)",
        "glimmer-run",
        "--config",
        "deploy.toml",
        "--output",
        str(DEMO / "results.jsonl"),
        "--report",
        str(DEMO / "report.json"),
    )
    step(
        "regression checks: FPS, p99 latency, weighted F1, INT8 drop (deploy.toml [checks])",
        "glimmer-check",
        "--config",
        "deploy.toml",
    )
    print("\n" + NOTE)
    print(
        f"Artifacts: {DEMO}/ (glimmernet.onnx, glimmernet.int8.onnx, export-report.json, "
        "results.jsonl, "
        "report.json, run/metrics.json and plots)"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"demo: step failed with exit code {exc.returncode}", file=sys.stderr)
        sys.exit(exc.returncode)
