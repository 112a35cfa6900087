"""gpupool._ledger.location: which directory the ledger uses, how it is created, what is refused.

Real directories, real modes, a real read-only mount (in a mount namespace of
its own, so nothing leaks to the machine) and a real second uid where the OS
allows it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import gpupool
from gpupool import LedgerError
from gpupool._ledger import location
from gpupool._ledger.location import (
    DEFAULT,
    LEDGER_ENV,
    MEMBERS,
    default_ledger_dir,
    filesystem_type,
    is_network_filesystem,
    prepare_ledger_dir,
    resolve_ledger,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
#: The uid (and gid) a root test acts as to be "another user": nobody.
OTHER_UID = 65534
needs_root = pytest.mark.skipif(not IS_ROOT, reason="acting as a second uid needs root (setuid)")
linux_only = pytest.mark.skipif(not Path("/proc/self/mountinfo").exists(), reason="needs /proc")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LEDGER_ENV, raising=False)


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


class StrPath:
    """An os.PathLike that is not a pathlib.Path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path


class BytesPath:
    def __fspath__(self) -> bytes:
        return b"/tmp/ledger"


# -- resolution: what ledger= and GPUPOOL_LEDGER mean ------------------------------


def test_the_default_sentinel() -> None:
    assert repr(DEFAULT) == "<default ledger>"
    assert pickle.loads(pickle.dumps(DEFAULT)) is DEFAULT
    assert LEDGER_ENV == "GPUPOOL_LEDGER"


@pytest.mark.usefixtures("no_env")
def test_default_on_real_gpus_without_the_variable_is_the_default_directory() -> None:
    assert resolve_ledger(DEFAULT, real_gpus=True) == default_ledger_dir()


def test_default_on_real_gpus_takes_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger"))
    assert resolve_ledger(DEFAULT, real_gpus=True) == tmp_path / "ledger"


def test_an_empty_variable_means_the_default_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LEDGER_ENV, "")
    assert resolve_ledger(DEFAULT, real_gpus=True) == default_ledger_dir()


@pytest.mark.parametrize("value", ["off", "OFF", "none", "None", " off "])
def test_the_variable_can_turn_the_ledger_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(LEDGER_ENV, value)
    assert resolve_ledger(DEFAULT, real_gpus=True) is None


@pytest.mark.parametrize("env", [None, "/some/where"])
def test_fake_gpus_never_join_by_default_whatever_the_variable_says(
    monkeypatch: pytest.MonkeyPatch, env: str | None
) -> None:
    if env is None:
        monkeypatch.delenv(LEDGER_ENV, raising=False)
    else:
        monkeypatch.setenv(LEDGER_ENV, env)
    assert resolve_ledger(DEFAULT, real_gpus=False) is None


@pytest.mark.parametrize("real_gpus", [True, False])
def test_none_is_off_for_every_pool(monkeypatch: pytest.MonkeyPatch, real_gpus: bool) -> None:
    monkeypatch.setenv(LEDGER_ENV, "/some/where")
    assert resolve_ledger(None, real_gpus=real_gpus) is None


@pytest.mark.parametrize("real_gpus", [True, False])
@pytest.mark.parametrize("spelling", [str, Path, StrPath])
def test_an_explicit_directory_is_used_for_every_pool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, real_gpus: bool, spelling: type
) -> None:
    monkeypatch.setenv(LEDGER_ENV, "/elsewhere")  # an explicit path wins over the variable
    given = spelling(str(tmp_path / "mine"))
    assert resolve_ledger(given, real_gpus=real_gpus) == tmp_path / "mine"


@pytest.mark.parametrize("bad", [3, True, 1.5, b"/tmp/ledger", BytesPath(), ["/tmp"], object()])
def test_a_wrong_type_is_a_type_error_naming_ledger(bad: object) -> None:
    with pytest.raises(TypeError) as info:
        resolve_ledger(bad, real_gpus=True)
    message = str(info.value)
    assert message.startswith("ledger must be ")
    assert "os.PathLike" in message
    assert "None" in message
    assert "got " in message


@pytest.mark.parametrize("bad", ["", "a\0b", StrPath("")])
def test_an_empty_path_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^ledger must be .*non-empty path, got"):
        resolve_ledger(bad, real_gpus=False)


def test_an_explicit_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(LedgerError, match="is not a directory") as info:
        resolve_ledger(str(file), real_gpus=False)
    assert str(file) in str(info.value)


def test_a_variable_naming_a_file_is_refused_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    monkeypatch.setenv(LEDGER_ENV, str(file))
    with pytest.raises(LedgerError, match=r"from \$GPUPOOL_LEDGER\) exists and is not a directory"):
        resolve_ledger(DEFAULT, real_gpus=True)


def test_ledger_error_is_a_public_gpupool_error() -> None:
    assert gpupool.LedgerError is LedgerError
    assert issubclass(LedgerError, gpupool.GPUPoolError)
    assert "LedgerError" in gpupool.__all__


# -- the default directory ----------------------------------------------------------


def test_the_default_directory_is_on_dev_shm_when_it_can_be(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    assert default_ledger_dir(shm=shm, fallback=tmp_path / "var") == shm / "gpupool"


def test_the_default_directory_falls_back_without_dev_shm(tmp_path: Path) -> None:
    assert default_ledger_dir(shm=tmp_path / "missing", fallback=tmp_path) == tmp_path / "gpupool"
    (tmp_path / "file").write_text("")
    assert default_ledger_dir(shm=tmp_path / "file", fallback=tmp_path) == tmp_path / "gpupool"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="this machine has no /dev/shm")
def test_the_real_default_is_dev_shm_here() -> None:
    if os.access("/dev/shm", os.W_OK | os.X_OK):
        assert default_ledger_dir() == Path("/dev/shm/gpupool")
    else:
        assert default_ledger_dir() == Path("/var/tmp/gpupool")


# -- creating the directory ---------------------------------------------------------


@pytest.mark.usefixtures("umask_077")
def test_a_created_ledger_is_world_writable_and_sticky_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "parent" / "grandchild" / "ledger"
    assert prepare_ledger_dir(target) == target.resolve()
    assert mode(target) == 0o1777
    assert mode(target / MEMBERS) == 0o1777
    # Parents it had to create can be reached by every user, written by none.
    assert mode(tmp_path / "parent") == 0o755
    assert mode(tmp_path / "parent" / "grandchild") == 0o755
    # Nothing left beside it (staging directory) or in it (the write probe).
    assert os.listdir(target.parent) == ["ledger"]
    assert os.listdir(target) == [MEMBERS]
    assert os.listdir(target / MEMBERS) == []


def test_preparing_twice_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "ledger"
    first = prepare_ledger_dir(target)
    (target / "ledger.sqlite").write_text("data")
    assert prepare_ledger_dir(target) == first
    assert sorted(os.listdir(target)) == ["ledger.sqlite", MEMBERS]
    assert (target / "ledger.sqlite").read_text() == "data"


def test_an_existing_directory_is_used_as_it_is(tmp_path: Path) -> None:
    target = tmp_path / "ledger"
    target.mkdir()
    os.chmod(target, 0o2770)  # say, an administrator's choice: one group only
    (target / "keep").write_text("x")
    assert prepare_ledger_dir(target) == target.resolve()
    assert mode(target) == 0o2770
    assert (target / "keep").read_text() == "x"
    assert mode(target / MEMBERS) == 0o1777  # the one thing added


def test_an_existing_members_directory_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "ledger" / MEMBERS).mkdir(parents=True)
    os.chmod(tmp_path / "ledger" / MEMBERS, 0o750)
    prepare_ledger_dir(tmp_path / "ledger")
    assert mode(tmp_path / "ledger" / MEMBERS) == 0o750


def test_a_relative_path_comes_back_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert prepare_ledger_dir(Path("rel")) == (tmp_path / "rel").resolve()


def test_a_symbolic_link_to_a_directory_comes_back_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert prepare_ledger_dir(tmp_path / "link") == (tmp_path / "real").resolve()
    assert (tmp_path / "real" / MEMBERS).is_dir()


def test_processes_creating_it_at_once_all_get_the_same_directory(tmp_path: Path) -> None:
    target = tmp_path / "ledger"
    code = (
        "import sys; from pathlib import Path; "
        "from gpupool._ledger.location import prepare_ledger_dir; "
        "print(prepare_ledger_dir(Path(sys.argv[1])))"
    )
    children = [
        subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE)
        for _ in range(6)
    ]
    outputs = [child.communicate(timeout=60)[0].decode().strip() for child in children]
    assert [child.returncode for child in children] == [0] * 6
    assert set(outputs) == {str(target.resolve())}
    assert mode(target) == 0o1777
    assert os.listdir(tmp_path) == ["ledger"]  # no staging directory left behind
    assert os.listdir(target) == [MEMBERS]


# -- refused places -----------------------------------------------------------------


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "ledger"
    file.write_text("x")
    with pytest.raises(LedgerError, match="exists and is not a directory: remove it"):
        prepare_ledger_dir(file)
    with pytest.raises(LedgerError, match=r"\(or a parent\) is not a directory") as info:
        prepare_ledger_dir(file / "below")
    assert str(file / "below") in str(info.value)
    assert file.read_text() == "x"


def test_a_file_where_members_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / MEMBERS).write_text("x")
    with pytest.raises(LedgerError, match="members exists and is not a directory"):
        prepare_ledger_dir(tmp_path / "ledger")


def test_a_dangling_symbolic_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ledger").symlink_to(tmp_path / "missing")
    with pytest.raises(LedgerError, match="symbolic link to a path that does not exist"):
        prepare_ledger_dir(tmp_path / "ledger")
    assert not (tmp_path / "missing").exists()


def _mount_line(mount_id: int, mount_point: str, fstype: str, optional: str = "") -> str:
    escaped = (
        mount_point.replace("\\", "\\134")
        .replace(" ", "\\040")
        .replace("\t", "\\011")
        .replace("\n", "\\012")
    )
    optional = f" {optional}" if optional else ""
    return f"{mount_id} 1 0:{mount_id} / {escaped} rw,relatime{optional} - {fstype} src rw"


CRAFTED = "\n".join(
    [
        "22 27 0:21 / /proc rw,nosuid - proc proc rw",
        _mount_line(27, "/", "ext4"),
        _mount_line(40, "/mnt/nfs", "nfs4", "shared:5 master:2"),
        _mount_line(41, "/mnt/nfs/local", "xfs"),
        _mount_line(42, "/mnt/with space", "cifs"),
        _mount_line(43, "/mnt/tab\there", "lustre"),
        _mount_line(44, "/mnt/back\\slash", "gpfs"),
        _mount_line(45, "/mnt/nfsx", "btrfs"),
        _mount_line(46, "/scratch", "ext4"),
        _mount_line(47, "/scratch", "lustre"),  # mounted over the one before: on top
        "not a mountinfo line",
        "1 2 3 4 5 6 no separator here",
        "",
    ]
)


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/", "ext4"),
        ("/home/me/ledger", "ext4"),
        ("/mnt/nfs", "nfs4"),
        ("/mnt/nfs/a/b", "nfs4"),
        ("/mnt/nfs/local/x", "xfs"),  # the longest mount point wins
        ("/mnt/nfsx/a", "btrfs"),  # /mnt/nfs is a prefix of the text, not a parent
        ("/mnt/nfsxyz", "ext4"),
        ("/mnt/with space/ledger", "cifs"),  # \040 in mountinfo
        ("/mnt/with", "ext4"),
        ("/mnt/tab\there/x", "lustre"),
        ("/mnt/back\\slash/x", "gpfs"),
        ("/scratch/ledger", "lustre"),  # of two at one point, the one on top
        ("/proc/self", "proc"),
    ],
)
def test_filesystem_type_reads_crafted_mountinfo(path: str, fstype: str) -> None:
    assert filesystem_type(Path(path), CRAFTED) == fstype


def test_filesystem_type_without_a_matching_mount() -> None:
    assert filesystem_type(Path("/x"), "") is None
    assert filesystem_type(Path("/x"), _mount_line(5, "/data", "ext4")) is None
    with pytest.raises(ValueError, match="path must be an absolute path, got 'rel'"):
        filesystem_type(Path("rel"), CRAFTED)


@linux_only
def test_filesystem_type_of_this_machine() -> None:
    text = Path("/proc/self/mountinfo").read_text()
    assert filesystem_type(Path("/proc/self").resolve(), text) == "proc"
    assert filesystem_type(Path("/"), text)


NETWORK = [
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "glusterfs", "beegfs",
    "fuse.sshfs", "afs", "9p", "ocfs2", "gfs2", "fuse.ceph-fuse", "fuse.glusterfs", "fuse.s3fs",
    "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "wekafs",
]  # fmt: skip
LOCAL = ["ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "fuseblk", "fuse", "fuse.portal"]


@pytest.mark.parametrize("fstype", NETWORK)
def test_network_and_cluster_filesystems_are_unsafe(fstype: str) -> None:
    assert is_network_filesystem(fstype)


@pytest.mark.parametrize("fstype", LOCAL)
def test_local_filesystems_are_safe(fstype: str) -> None:
    assert not is_network_filesystem(fstype)


def _mountinfo_file(tmp_path: Path, *lines: str) -> Path:
    file = tmp_path / "mountinfo"
    file.write_text("\n".join([_mount_line(1, "/", "ext4"), *lines]) + "\n")
    return file


@pytest.mark.parametrize("fstype", ["nfs", "nfs4", "cifs", "lustre", "gpfs", "fuse.sshfs"])
def test_a_network_filesystem_is_refused_before_anything_is_created(
    tmp_path: Path, fstype: str
) -> None:
    remote = (tmp_path / "remote").resolve()
    remote.mkdir()
    mountinfo = _mountinfo_file(tmp_path, _mount_line(2, str(remote), fstype))
    with pytest.raises(LedgerError) as info:
        prepare_ledger_dir(remote / "ledger", mountinfo=mountinfo)
    message = str(info.value)
    assert str(remote / "ledger") in message
    assert f"({fstype}, mounted at {remote})" in message
    assert "WAL" in message
    assert "flock" in message
    assert "local" in message
    assert "GPUPOOL_LEDGER" in message
    assert os.listdir(remote) == []


def test_a_network_mount_point_with_a_space_is_refused(tmp_path: Path) -> None:
    remote = (tmp_path / "my share").resolve()
    remote.mkdir()
    mountinfo = _mountinfo_file(tmp_path, _mount_line(2, str(remote), "smb3"))
    assert "\\040" in mountinfo.read_text()
    with pytest.raises(LedgerError, match="smb3"):
        prepare_ledger_dir(remote, mountinfo=mountinfo)


def test_a_local_mount_inside_a_network_one_is_accepted(tmp_path: Path) -> None:
    remote = (tmp_path / "remote").resolve()
    (remote / "local").mkdir(parents=True)
    mountinfo = _mountinfo_file(
        tmp_path, _mount_line(2, str(remote), "nfs4"), _mount_line(3, str(remote / "local"), "ext4")
    )
    assert prepare_ledger_dir(remote / "local" / "ledger", mountinfo=mountinfo).is_dir()
    with pytest.raises(LedgerError):
        prepare_ledger_dir(remote / "other", mountinfo=mountinfo)


def test_a_link_into_a_network_filesystem_is_refused(tmp_path: Path) -> None:
    remote = (tmp_path / "remote").resolve()
    remote.mkdir()
    (tmp_path / "link").symlink_to(remote)
    mountinfo = _mountinfo_file(tmp_path, _mount_line(2, str(remote), "nfs"))
    with pytest.raises(LedgerError, match="nfs, mounted at"):
        prepare_ledger_dir(tmp_path / "link", mountinfo=mountinfo)


def test_unreadable_mountinfo_refuses_nothing(tmp_path: Path) -> None:
    assert prepare_ledger_dir(tmp_path / "a", mountinfo=tmp_path / "missing").is_dir()
    assert prepare_ledger_dir(tmp_path / "b", mountinfo=tmp_path).is_dir()  # a directory


# -- read-only and not writable -----------------------------------------------------


def _private_mount_namespace() -> list[str] | None:
    """The ``unshare`` command line of a mount namespace of our own, or None if unavailable."""
    unshare = shutil.which("unshare")
    if unshare is None or not Path("/proc/self/mountinfo").exists():
        return None
    flags = ["--mount", "--propagation", "private"]
    if not IS_ROOT:
        flags = ["--user", "--map-root-user", *flags]
    command = [unshare, *flags]
    probe = subprocess.run([*command, "true"], capture_output=True, check=False)
    return command if probe.returncode == 0 else None


READ_ONLY = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path
    from gpupool import LedgerError
    from gpupool._ledger.location import default_ledger_dir, prepare_ledger_dir

    def attempt(path):
        try:
            return "ok " + str(prepare_ledger_dir(path))
        except LedgerError as error:
            return "LedgerError " + str(error)

    mount = Path(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "rw,size=1m", "tmpfs", str(mount)], check=True)
    before = attempt(mount / "existing")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    print(json.dumps({
        "before": before,
        "existing": attempt(mount / "existing"),
        "new": attempt(mount / "new"),
        "default": str(default_ledger_dir(shm=mount, fallback=Path("/fallback"))),
    }))
    """
)


def test_a_read_only_filesystem_is_refused(tmp_path: Path) -> None:
    namespace = _private_mount_namespace()
    if namespace is None:
        pytest.skip("no mount namespace of our own here (unshare, or user namespaces, missing)")
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(
        [*namespace, sys.executable, "-c", READ_ONLY, str(mount)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0 and "mount" in done.stderr and "permission denied" in done.stderr:
        pytest.skip(
            f"this kernel lets us create a mount namespace but not mount tmpfs: {done.stderr}"
        )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["before"] == f"ok {mount.resolve() / 'existing'}"  # the mount itself works
    for key in ("existing", "new"):
        assert seen[key].startswith("LedgerError the ledger directory "), seen[key]
        assert str(mount / key) in seen[key]
        assert "read-only filesystem" in seen[key]
        assert "GPUPOOL_LEDGER=DIR" in seen[key]
        assert "ledger=None" in seen[key]
    # A read-only /dev/shm is not the default: the fallback is.
    assert seen["default"] == "/fallback/gpupool"
    assert os.listdir(mount) == []  # the tmpfs never showed out here


AS_OTHER_USER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from gpupool import LedgerError
    from gpupool._ledger.location import prepare_ledger_dir

    uid = int(sys.argv[1])
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # after the imports, which may live where this uid cannot read

    def attempt(action):
        try:
            return "ok " + str(action())
        except LedgerError as error:
            return "LedgerError " + str(error)
        except OSError as error:
            return "OSError " + error.strerror

    def write(path):
        path.write_text("mine")
        return path

    def remove(path):
        path.unlink()
        return path

    def rename(path):
        path.rename(path.with_name("renamed"))
        return path

    verbs = {"prepare": prepare_ledger_dir, "write": write, "remove": remove, "rename": rename}
    results = {}
    for name in sys.argv[2:]:
        verb, _, arg = name.partition("=")
        results[name] = attempt(lambda: verbs[verb](Path(arg)))
    print(json.dumps(results))
    """
)


def _as_other_user(*actions: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", AS_OTHER_USER, str(OTHER_UID), *actions],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, str] = json.loads(done.stdout)
    return results


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory like /tmp (mode 1777) that every uid can reach.

    Not under pytest's ``tmp_path``, whose base directory only its user may enter.
    """
    path = Path(tempfile.mkdtemp(prefix="gpupool-test-ledger-"))
    try:
        os.chmod(path, 0o1777)
        yield path.resolve()
    finally:
        shutil.rmtree(path)


def test_a_directory_this_user_cannot_write_is_refused(tmp_path: Path, shared_tmp: Path) -> None:
    if IS_ROOT:
        locked = shared_tmp / "locked"  # root's, mode 755: another user may not write it
    else:
        locked = tmp_path / "locked"
    (locked / MEMBERS).mkdir(parents=True)
    if IS_ROOT:
        # Root may write anywhere, so act as another user.
        os.chmod(locked, 0o755)
        os.chmod(locked / MEMBERS, 0o755)
        seen = _as_other_user(f"prepare={locked}", f"prepare={locked / 'new'}")
        existing, new = seen[f"prepare={locked}"], seen[f"prepare={locked / 'new'}"]
    else:
        os.chmod(locked / MEMBERS, 0o555)
        os.chmod(locked, 0o555)
        try:
            with pytest.raises(LedgerError) as first:
                prepare_ledger_dir(locked)
            with pytest.raises(LedgerError) as second:
                prepare_ledger_dir(locked / "new")
        finally:
            os.chmod(locked, 0o755)
            os.chmod(locked / MEMBERS, 0o755)
        existing, new = f"LedgerError {first.value}", f"LedgerError {second.value}"
    assert existing.startswith(f"LedgerError cannot create files in the ledger directory {locked}")
    assert "chmod 1777" in existing
    assert "GPUPOOL_LEDGER=DIR" in existing
    assert new.startswith(f"LedgerError cannot create the ledger directory {locked / 'new'}")
    assert "mkdir -m 1777" in new
    assert os.listdir(locked) == [MEMBERS]
    assert os.listdir(locked / MEMBERS) == []


@needs_root
def test_two_users_share_a_ledger_and_cannot_remove_each_others_files(shared_tmp: Path) -> None:
    ledger = prepare_ledger_dir(shared_tmp / "ledger")  # created by root
    (ledger / MEMBERS / "root.lock").write_text("root's")
    mine = ledger / MEMBERS / "nobody.lock"
    seen = _as_other_user(
        f"prepare={ledger}",
        f"write={mine}",
        f"remove={ledger / MEMBERS / 'root.lock'}",
        f"rename={ledger / MEMBERS / 'root.lock'}",
        f"write={ledger / 'nobody.sqlite'}",
    )
    assert seen[f"prepare={ledger}"] == f"ok {ledger}"
    assert seen[f"write={mine}"] == f"ok {mine}"
    assert os.stat(mine).st_uid == OTHER_UID
    # The sticky bit: another user adds files, but cannot remove or rename root's.
    assert seen[f"remove={ledger / MEMBERS / 'root.lock'}"] == "OSError Operation not permitted"
    assert seen[f"rename={ledger / MEMBERS / 'root.lock'}"] == "OSError Operation not permitted"
    assert (ledger / MEMBERS / "root.lock").read_text() == "root's"
    assert seen[f"write={ledger / 'nobody.sqlite'}"] == f"ok {ledger / 'nobody.sqlite'}"


@needs_root
def test_a_ledger_another_user_created_is_joined_by_root(shared_tmp: Path) -> None:
    seen = _as_other_user(f"prepare={shared_tmp / 'theirs'}")
    assert seen[f"prepare={shared_tmp / 'theirs'}"] == f"ok {shared_tmp / 'theirs'}"
    assert os.stat(shared_tmp / "theirs").st_uid == OTHER_UID
    assert mode(shared_tmp / "theirs") == 0o1777
    assert prepare_ledger_dir(shared_tmp / "theirs") == shared_tmp / "theirs"


def _protected_symlinks() -> int | None:
    try:
        return int(Path("/proc/sys/fs/protected_symlinks").read_text())
    except (OSError, ValueError):
        return None


@needs_root
@pytest.mark.skipif(
    _protected_symlinks() != 1,
    reason="fs.protected_symlinks is off on this machine: Linux follows any link, so would we",
)
def test_a_link_another_user_planted_in_a_sticky_directory_is_not_followed(
    shared_tmp: Path,
) -> None:
    """Links are followed by the kernel, never by reading them (as realpath would)."""
    elsewhere = shared_tmp / "elsewhere"
    elsewhere.mkdir()
    planted = shared_tmp / "ledger"
    planted.symlink_to(elsewhere)
    os.lchown(planted, OTHER_UID, OTHER_UID)
    with pytest.raises(LedgerError, match="cannot enter the ledger directory"):
        prepare_ledger_dir(planted)
    assert os.listdir(elsewhere) == []


def test_the_module_says_what_it_exports() -> None:
    for name in location.__all__:
        assert hasattr(location, name), name
