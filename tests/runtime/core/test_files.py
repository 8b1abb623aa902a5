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
