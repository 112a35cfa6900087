"""gpupool._system.files.atomic_file: a reader sees the whole new file or the old one."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupool._system.files import atomic_file


def test_the_file_appears_whole_when_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with atomic_file(target, "w", encoding="utf-8") as file:
        file.write("first half, ")
        assert not target.exists()  # nothing under the target's name until the end
        file.write("second half")
    assert target.read_text(encoding="utf-8") == "first half, second half"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def write_half() -> None:
        with atomic_file(target) as file:
            file.write(b"new, cut short")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_half()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
