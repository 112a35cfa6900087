"""The jobs-file parser and the reader behind ``gpupool run --watch``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpupool._cli.jobs_file import (
    JobDefaults,
    JobsFileError,
    JobsFileReader,
    JobSpec,
    parse_duration,
    parse_jobs,
    parse_memory_mb,
)

EXAMPLE = """\
# a sweep
python train.py --lr 0.1

  [gpus=2 mem=20G timeout=2h retries=1] python train_big.py
[gpus=0] python report.py   # the shell ignores this comment
[name=baseline priority=-3, memory=512M] python train.py --baseline
[ -f done ] || echo not yet
"""


def test_example_file() -> None:
    jobs = parse_jobs(EXAMPLE, source="sweep.txt")
    assert [(j.line, j.command) for j in jobs] == [
        (2, "python train.py --lr 0.1"),
        (4, "python train_big.py"),
        (5, "python report.py   # the shell ignores this comment"),
        (6, "python train.py --baseline"),
        (7, "[ -f done ] || echo not yet"),
    ]
    plain, big, cpu, named, test = jobs
    assert (plain.gpus, plain.memory_mb, plain.timeout, plain.retries) == (1, 0, None, 0)
    assert (big.gpus, big.memory_mb, big.timeout, big.retries) == (2, 20 * 1024, 7200.0, 1)
    assert cpu.gpus == 0
    assert (named.key, named.name, named.priority, named.memory_mb) == (
        "baseline",
        "baseline",
        -3,
        512,
    )
    assert test.gpus == 1
    assert len({j.key for j in jobs}) == 5


def test_defaults_apply_to_lines_without_resources() -> None:
    defaults = JobDefaults(gpus=2, memory_mb=100, timeout=60, retries=3)
    plain, spec = parse_jobs("a\n[gpus=1 retries=0] b\n", defaults=defaults)
    assert (plain.gpus, plain.memory_mb, plain.timeout, plain.retries) == (2, 100, 60, 3)
    assert (spec.gpus, spec.memory_mb, spec.timeout, spec.retries) == (1, 100, 60, 0)


def test_keys_are_stable_and_ignore_layout_and_resources() -> None:
    first = parse_jobs("echo a\necho b\n")
    moved = parse_jobs("# header\n\n[gpus=3] echo b\n   echo a   \n")
    assert {j.command: j.key for j in first} == {j.command: j.key for j in moved}
    assert all(j.key.startswith("job-") and len(j.key) == 20 for j in first)


def test_a_repeated_command_runs_again_under_its_own_key() -> None:
    jobs = parse_jobs("echo a\necho b\necho a\necho a\n")
    keys = [j.key for j in jobs]
    assert len(set(keys)) == 4
    assert keys[2] == keys[0] + "~2"
    assert keys[3] == keys[0] + "~3"


def test_every_bad_line_is_reported_with_its_number() -> None:
    text = (
        "ok one\n"
        "[gpus=two] a\n"
        "[gpu=1 gpus=2] b\n"
        "[mem=lots] c\n"
        "[timeout=5x] d\n"
        "[gpus=1\n"
        "[gpus=1]\n"
        "[cpus=4] e\n"
        "[retries=-1] f\n"
        "[gpus] g\n"
        "[name=x] h\n"
        "[name=x] i\n"
        "echo continued \\\n"
    )
    with pytest.raises(JobsFileError) as info:
        parse_jobs(text, source="jobs.txt")
    assert list(info.value.problems) == [
        "jobs.txt:2: gpus must be an int >= 0, got 'two'",
        "jobs.txt:3: resource 'gpus' is given twice",
        "jobs.txt:4: memory must look like 8G, 512M or 8000 (MB), got 'lots'",
        "jobs.txt:5: timeout must be a duration like 90, 90s, 30m, 2h or 1h30m, got '5x'",
        "jobs.txt:6: resource spec has no closing ']', e.g. [gpus=2 mem=8G] cmd",
        "jobs.txt:7: no command after the resource spec '[gpus=1]'",
        "jobs.txt:8: unknown resource 'cpus' (did you mean gpus?); "
        "known: gpus, mem, shared, timeout, retries, priority, est, name",
        "jobs.txt:9: retries must be an int >= 0, got '-1'",
        "jobs.txt:10: resource 'gpus' must be key=value, for example gpus=2",
        "jobs.txt:12: name=x is already used on line 11; names must be unique",
        "jobs.txt:13: a command must fit on one line (no '\\' continuation)",
    ]
    assert str(info.value).splitlines()[0] == "jobs.txt:2: gpus must be an int >= 0, got 'two'"


@pytest.mark.parametrize(
    ("text", "mb"),
    [("8000", 8000), ("8G", 8192), ("8GiB", 8192), ("8gb", 8192), ("512M", 512), ("1.5G", 1536)],
)
def test_memory_sizes(text: str, mb: int) -> None:
    assert parse_memory_mb(text) == mb


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "h", "1h30", "-5m", "5 m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="timeout must be"):
        parse_duration(text)


def test_argument_validation() -> None:
    with pytest.raises(TypeError, match="text must be a str"):
        parse_jobs(b"echo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="first_line must be an int >= 1"):
        parse_jobs("echo", first_line=0)
    with pytest.raises(ValueError, match="gpus must be an int >= 0"):
        JobDefaults(gpus=-1)
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        JobDefaults(timeout=0)


def _append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def test_reader_returns_only_appended_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_text("echo a\necho b\n")
    reader = JobsFileReader(path)
    assert [j.command for j in reader.read_new().jobs] == ["echo a", "echo b"]
    assert reader.read_new(complete_only=True).jobs == ()
    _append(path, "# more\necho c\necho a\n")
    new = reader.read_new(complete_only=True)
    assert [(j.line, j.command) for j in new.jobs] == [(4, "echo c"), (5, "echo a")]
    assert new.jobs[1].key.endswith("~2")


def test_reader_does_not_read_an_unchanged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.txt"
    path.write_text("echo a\n")
    reader = JobsFileReader(path)
    reader.read_new()
    opened: list[Path] = []
    real_open = Path.open

    def spy(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    assert reader.read_new(complete_only=True).jobs == ()
    assert opened == []
    _append(path, "echo b\n")
    opened.clear()
    assert [j.command for j in reader.read_new(complete_only=True).jobs] == ["echo b"]
    assert opened == [path]


def test_reader_waits_for_the_end_of_a_line_being_written(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_text("echo a\n")
    reader = JobsFileReader(path)
    reader.read_new()
    _append(path, "echo hal")
    assert reader.read_new(complete_only=True).jobs == ()
    _append(path, "f\n")
    assert [(j.line, j.command) for j in reader.read_new(complete_only=True).jobs] == [
        (2, "echo half")
    ]


def test_reader_reports_bad_appended_lines_and_keeps_the_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_text("echo a\n")
    reader = JobsFileReader(path)
    reader.read_new()
    _append(path, "[gpus=x] echo b\necho c\n")
    new = reader.read_new(complete_only=True)
    assert [j.command for j in new.jobs] == ["echo c"]
    assert [str(p) for p in new.problems] == [f"{path}:2: gpus must be an int >= 0, got 'x'"]
    _append(path, "echo d\n")
    assert [j.command for j in reader.read_new(complete_only=True).jobs] == ["echo d"]
    assert reader.read_new(complete_only=True).problems == ()  # reported once


def test_reader_rereads_a_rewritten_file_without_repeating_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_text("echo a\necho b\necho c\n")
    reader = JobsFileReader(path)
    reader.read_new()
    path.write_text("echo a\necho d\n")
    assert [j.command for j in reader.read_new(complete_only=True).jobs] == ["echo d"]


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(JobsFileError, match="no such file"):
        JobsFileReader(tmp_path / "missing.txt").read_new()
    with pytest.raises(JobsFileError, match="is a directory"):
        JobsFileReader(tmp_path).read_new()
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"echo a\necho \xff\n")
    with pytest.raises(JobsFileError, match=r"binary.txt:2: not UTF-8 text"):
        JobsFileReader(binary).read_new()


def test_reader_takes_no_fragment_of_a_line_for_a_job_when_text_is_inserted_above(
    tmp_path: Path,
) -> None:
    # Regression: the reader resumed at the old byte offset, so a comment inserted
    # at the top made it read the last bytes of line 2 as a new line and run them.
    path = tmp_path / "jobs.txt"
    path.write_text("echo first\necho second; echo FRAGMENT-RAN\n")
    reader = JobsFileReader(path)
    assert len(reader.read_new().jobs) == 2
    comment = "#" + "-" * (len("echo FRAGMENT-RAN\n") - 2) + "\n"
    path.write_text(comment + path.read_text() + "echo third\n")
    new = reader.read_new(complete_only=True)
    assert [(j.line, j.command) for j in new.jobs] == [(4, "echo third")]
    assert new.problems == ()


def test_reader_finds_a_line_inserted_or_edited_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_text("echo a\necho b\necho c\n")
    reader = JobsFileReader(path)
    first = {j.command: j.key for j in reader.read_new().jobs}
    path.write_text("echo a\necho new\necho b\necho c, edited\n")
    new = reader.read_new(complete_only=True)
    assert [(j.line, j.command) for j in new.jobs] == [(2, "echo new"), (4, "echo c, edited")]
    assert first["echo b"] not in {j.key for j in new.jobs}


def test_reader_counts_copies_of_a_command_over_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_text("echo a\n")
    reader = JobsFileReader(path)
    assert [j.key for j in reader.read_new().jobs] == [parse_jobs("echo a")[0].key]
    path.write_text("echo a\necho z\necho a\n")  # a second copy: runs a second time
    new = reader.read_new(complete_only=True)
    assert [(j.line, j.command, j.key.endswith("~2")) for j in new.jobs] == [
        (2, "echo z", False),
        (3, "echo a", True),
    ]


def test_reader_check_rejects_jobs_once_and_takes_them_after_a_fix(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_text("echo a\n")
    reader = JobsFileReader(path)
    reader.read_new()

    def check(job: JobSpec) -> str | None:
        return f"gpus={job.gpus} is too many" if job.gpus > 2 else None

    _append(path, "[gpus=3] echo big\necho b\n")
    new = reader.read_new(complete_only=True, check=check)
    assert [j.command for j in new.jobs] == ["echo b"]
    assert [str(p) for p in new.problems] == [f"{path}:2: gpus=3 is too many"]
    _append(path, "echo c\n")
    new = reader.read_new(complete_only=True, check=check)
    assert ([j.command for j in new.jobs], new.problems) == (["echo c"], ())
    path.write_text(path.read_text().replace("gpus=3", "gpus=2"))
    new = reader.read_new(complete_only=True, check=check)
    assert [(j.line, j.command, j.gpus) for j in new.jobs] == [(2, "echo big", 2)]


def test_log_names_are_readable_unique_and_follow_the_key() -> None:
    jobs = parse_jobs(
        "python train.py --lr 0.1\n"
        "[name=base.line] python train.py\n"
        "python train.py --lr 0.1\n"
        "   ;;; \n"
        "python " + "x" * 80 + "\n"
    )
    names = [j.log_name for j in jobs]
    digest = jobs[0].key.removeprefix("job-")
    assert names[:3] == [
        f"python-train.py-lr-0.1_{digest}.log",
        "base.line.log",
        f"python-train.py-lr-0.1_{digest}~2.log",
    ]
    assert names[3].startswith("job_")
    assert names[4] == "python-" + "x" * 33 + "_" + jobs[4].key.removeprefix("job-") + ".log"
    assert len(set(names)) == len(names)
    moved = parse_jobs("# a comment\n\n[gpus=2] python train.py --lr 0.1\n")
    assert moved[0].log_name == names[0]
