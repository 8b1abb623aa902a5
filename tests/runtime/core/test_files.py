"""glimmer.runtime.core.files: atomic writes keep the old file on failure; file hashes."""

import json

import pytest

from glimmer.runtime.core.files import atomic_path, atomic_write_text, sha256_file


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, json.dumps({"ok": 1}))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("export failed")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert len(sha256_file(target)) == 64


def test_atomic_edit_through_a_symlink_keeps_the_link_and_the_mode(tmp_path):
    from glimmer.runtime.core.files import atomic_edit_text

    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "deploy.toml"
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "deploy.toml"
    link.symlink_to(real)
    atomic_edit_text(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert (real.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in real_dir.iterdir()] == ["deploy.toml"]  # the temp sat beside it
    # a plain write replaces a link with a file (what --update-baseline used to do)
    atomic_write_text(link, "plain\n")
    assert not link.is_symlink() and real.read_text() == "new\n"
