"""glimmer-info: the command line, its JSON, and its errors."""

import json
import subprocess
import sys

from glimmer.models.checkpoint import save_checkpoint
from glimmer.models.glimmernet import GlimmerNet
from glimmer.models.info import main


def test_json_for_default_arch(capsys):
    assert main(["--arch", "glimmernet", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 31_204 and info["macs"] == 26_464_280
    assert info["paper_compatible_flops"] == 22_264_920
    assert sum(p["params"] for p in info["parts"]) == 31_204
    assert sum(p["macs"] for p in info["parts"]) == 26_464_280


def test_table_for_takunet_and_img_size(capsys):
    assert main(["--arch", "takunet", "--img-size", "240"]) == 0
    out = capsys.readouterr().out
    assert "37,444" in out and "input 240x240" in out and "Paper-compatible" in out


def test_checkpoint_uses_its_input_size(tmp_path, capsys):
    path = tmp_path / "m.pt"
    save_checkpoint(path, GlimmerNet(depths=(1, 1, 1, 1)), "glimmernet", list("abcd"), (64, 64))
    assert main([str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 21_124 and info["img_size"] == 64


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "glimmer.models.info", *args], capture_output=True, text=True
    )


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    (tmp_path / "junk.pt").write_text("junk")
    for args, needle in [
        (["nope.pt"], "nope.pt: no such file"),
        ([str(tmp_path / "junk.pt")], "junk.pt: not a PyTorch checkpoint"),
        (["--arch", "glimmernet", "--img-size", "8"], "--img-size"),
        ([], "give either CHECKPOINT or --arch"),
    ]:
        proc = _run(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert needle in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
