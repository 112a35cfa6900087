"""Where the machine-wide ledger lives, who joins it by default, and the places it refuses.

The ledger is a directory: an SQLite file, plus a lock file and a socket per
member process under ``members/``. Everything here is about choosing and
preparing that directory; what goes in it is the ledger's business.

**The default directory** is ``/dev/shm/gpupool``, or ``/var/tmp/gpupool``
where ``/dev/shm`` is missing or not writable. ``/dev/shm`` is a tmpfs: it is
local to the machine (never a network filesystem, see below), in memory (a
grant is a transaction on the ledger, so it must be fast) and empty after a
reboot, so a reboot can never leave stale holds behind. ``/var/tmp`` is local
disk and is kept across reboots, so there the ledger has to tell holds of an
earlier boot apart itself (by the boot id). Two caveats the ledger must live
with:

* A container usually has a ``/dev/shm`` of its own. Containers that should
  share the host's GPUs fairly bind-mount one host directory and point
  ``GPUPOOL_LEDGER`` at it.
* systemd-logind, with ``RemoveIPC=yes`` (its default), deletes every file
  under ``/dev/shm`` owned by a regular (non-system) user once that user has
  no session left, subdirectories included. A user's ledger files can
  therefore vanish while other users' pools still use the ledger (the SQLite
  file too, if that user created it). The ledger must notice a file replaced
  or unlinked under it (as it must when someone deletes it by hand) and
  rebuild from the live members.

**Who joins by default.** ``GPUResourcePool(ledger=DEFAULT)`` (the default)
joins for pools on real GPUs (NVML) only: ``$GPUPOOL_LEDGER`` if it is set
and not empty (``off`` or ``none`` turns the ledger off), else the default
directory. A pool of fake GPUs joins only a ledger it is given explicitly
(``ledger=PATH``), and the environment variable does not apply to it, so a
test suite of fake GPUs never joins, or disturbs, the machine's real ledger.
``ledger=None`` is off for every pool.

**Permissions.** The ledger is shared by every user of the machine, so the
directories gpupool creates (the ledger's and ``members/``) get mode
``0o1777`` whatever the umask: world-writable with the sticky bit, like
``/tmp``, so any user may add files and only a file's owner (or root) may
remove or rename it. Parents it has to create get ``0o755``, so that other
users can reach the ledger without being able to write beside it. The
directory is created under a temporary name and renamed into place with
``members/`` already in it, so no process ever sees it half made (with
a mode the umask left). A directory that exists is used as it is: an
administrator who wants, say, one group only can make it ``2770``.

**Refused places** (:class:`~gpupool.LedgerError`, naming the path and what
to do):

* a network or cluster filesystem (NFS, CIFS, Lustre, GPFS, CephFS, ...):
  SQLite's WAL needs shared memory that only works on one machine, and
  ``flock`` is either local to one client or emulated, so two machines (or
  two processes) could hold the same GPU. The filesystem is looked up in
  ``/proc/self/mountinfo``; where that cannot be read, nothing is refused;
* a read-only filesystem, or a directory this user cannot create files in,
  found by creating and removing a file (``os.access`` is not enough: root
  passes it whatever the mode bits say, and it cannot see a full disk);
* a path that is not a directory.

Symbolic links are followed by the kernel, never by reading them here
(``os.path.realpath`` would): so Linux's ``fs.protected_symlinks`` keeps
applying, and a link another user planted in ``/dev/shm`` cannot point a
root-owned ledger somewhere else.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Final, Literal, TypeAlias

from .._core.checks import shown
from .._core.errors import LedgerError

__all__ = [
    "DEFAULT",
    "LEDGER_ENV",
    "MEMBERS",
    "NETWORK_FILESYSTEMS",
    "LedgerSetting",
    "default_ledger_dir",
    "filesystem_type",
    "is_network_filesystem",
    "prepare_ledger_dir",
    "resolve_ledger",
]

#: The environment variable that names the ledger directory of NVML pools.
LEDGER_ENV: Final = "GPUPOOL_LEDGER"

#: Where the default ledger lives when it can (a tmpfs), and the fallback.
SHM: Final = Path("/dev/shm")
VAR_TMP: Final = Path("/var/tmp")
_DIR_NAME: Final = "gpupool"

#: The subdirectory of per-process lock files and sockets.
MEMBERS: Final = "members"

#: Mode of a directory gpupool creates for the ledger: like /tmp.
SHARED_MODE: Final = 0o1777
#: Mode of a parent directory gpupool has to create on the way.
PARENT_MODE: Final = 0o755

MOUNTINFO: Final = Path("/proc/self/mountinfo")

#: Values of ``$GPUPOOL_LEDGER`` (any case) that turn the ledger off.
_OFF: Final = frozenset({"off", "none"})

#: Filesystem types (``/proc/self/mountinfo``'s field after ``-``) on which
#: SQLite's WAL and ``flock`` are not safe: network, cluster and VM-shared ones.
NETWORK_FILESYSTEMS: Final = frozenset(
    {
        "9p",
        "afs",
        "beegfs",
        "ceph",
        "cifs",
        "fuse.sshfs",
        "gfs2",
        "glusterfs",
        "gpfs",
        "lustre",
        "ncpfs",
        "nfs",
        "nfs4",
        "ocfs2",
        "orangefs",
        "panfs",
        "smb2",
        "smb3",
        "smbfs",
        "wekafs",
    }
)

#: Words in a FUSE subtype (``fuse.NAME``) that name a remote filesystem or an
#: object store (sshfs, ceph-fuse, glusterfs, s3fs, gcsfuse, rclone, ...).
_NETWORK_FUSE_WORDS: Final = (
    "beegfs",
    "blobfuse",
    "ceph",
    "cifs",
    "davfs",
    "gcsfuse",
    "gluster",
    "goofys",
    "gpfs",
    "juicefs",
    "lustre",
    "moosefs",
    "nfs",
    "rclone",
    "s3fs",
    "smb",
    "sshfs",
    "weka",
)


class _Default(enum.Enum):
    """The type of :data:`DEFAULT` (an enum, so that type checkers narrow ``is DEFAULT``)."""

    DEFAULT = "default"

    def __repr__(self) -> str:
        return "<default ledger>"


#: The default of ``GPUResourcePool(ledger=...)``: the machine's ledger for
#: NVML pools, none for others (see :func:`resolve_ledger`).
DEFAULT: Final = _Default.DEFAULT

#: What ``ledger=`` accepts.
LedgerSetting: TypeAlias = str | os.PathLike[str] | Literal[_Default.DEFAULT] | None


def default_ledger_dir(*, shm: Path = SHM, fallback: Path = VAR_TMP) -> Path:
    """The machine's ledger directory when nothing else is said: ``/dev/shm/gpupool`` if it can be.

    ``/dev/shm`` must exist and be a directory this process may write (and
    search); else ``/var/tmp/gpupool``. ``shm`` and ``fallback`` are for tests.
    """
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm / _DIR_NAME
    return fallback / _DIR_NAME


def resolve_ledger(ledger: object, *, real_gpus: bool) -> Path | None:
    """The ledger directory a pool (or a CLI command) uses, or ``None`` for no ledger.

    ``ledger`` is the pool's argument: :data:`DEFAULT`, ``None``, or a
    directory as a ``str`` or ``os.PathLike[str]``. With :data:`DEFAULT`, a
    pool on real GPUs (``real_gpus=True``: NVML) uses ``$GPUPOOL_LEDGER``
    (``off``/``none``: no ledger) or :func:`default_ledger_dir`, and any other
    pool uses none. The directory is not created here
    (:func:`prepare_ledger_dir` does that), but a path that exists and is not
    a directory is refused at once.
    """
    if ledger is None:
        return None
    if ledger is DEFAULT:
        if not real_gpus:
            return None
        value = os.environ.get(LEDGER_ENV, "")
        if value.strip().lower() in _OFF:
            return None
        if not value.strip():
            return default_ledger_dir()
        path = Path(value)
        _refuse_non_directory(path, origin=f" (from ${LEDGER_ENV})")
        return path
    allowed = "a directory (a str or os.PathLike[str]), None (no ledger) or left at its default"
    if not isinstance(ledger, (str, os.PathLike)):
        raise TypeError(f"ledger must be {allowed}, got {shown(ledger)}")
    text = os.fspath(ledger)
    if not isinstance(text, str):
        raise TypeError(f"ledger must be {allowed}, got a bytes path {shown(ledger)}")
    if not text or "\0" in text:
        raise ValueError(f"ledger must be {allowed}: a non-empty path, got {shown(ledger)}")
    path = Path(text)
    _refuse_non_directory(path, origin="")
    return path


# -- which filesystem a path is on ------------------------------------------------

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    r"""A mountinfo field as it is: the kernel writes space, tab, newline and ``\`` as ``\ooo``."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def _mount_of(path: str, mountinfo_text: str) -> tuple[str, str] | None:
    """``(mount point, filesystem type)`` of the mount that holds ``path``, if any line does.

    That is the longest mount point that is ``path`` or one of its parents;
    of several at the same point (mounted over each other), the last listed,
    which is the one on top.
    """
    best: tuple[str, str] | None = None
    for line in mountinfo_text.splitlines():
        # proc(5): id parent major:minor root MOUNT_POINT options [optional...] - TYPE source super
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            fstype = fields[separator + 1]
        except (ValueError, IndexError):
            continue  # not a mountinfo line
        mount_point = _unescape(fields[4])
        inside = mount_point == "/" or path == mount_point or path.startswith(mount_point + "/")
        if inside and (best is None or len(mount_point) >= len(best[0])):
            best = (mount_point, _unescape(fstype))
    return best


def filesystem_type(path: Path, mountinfo_text: str) -> str | None:
    """The type of the filesystem holding ``path`` (``"ext4"``, ``"nfs4"``, ``"fuse.sshfs"``).

    A pure function of ``mountinfo_text`` (the content of a
    ``/proc/PID/mountinfo``); ``None`` when no mount there holds ``path``.
    ``path`` must be absolute, with its symbolic links resolved, since
    mountinfo lists real mount points.
    """
    if not path.is_absolute():
        raise ValueError(f"path must be an absolute path, got {shown(str(path))}")
    mount = _mount_of(str(path), mountinfo_text)
    return None if mount is None else mount[1]


def is_network_filesystem(fstype: str) -> bool:
    """Whether SQLite's WAL and ``flock`` are unsafe on filesystems of type ``fstype``."""
    if fstype in NETWORK_FILESYSTEMS:
        return True
    kind, dot, subtype = fstype.partition(".")
    return kind == "fuse" and bool(dot) and any(w in subtype for w in _NETWORK_FUSE_WORDS)


def _read_mountinfo(mountinfo: Path) -> str | None:
    try:
        # fsdecode: the same decoding as the paths compared with it.
        return os.fsdecode(mountinfo.read_bytes())
    except OSError:
        return None


def _refuse_network(path: Path, mountinfo_text: str | None) -> None:
    if mountinfo_text is None:
        return
    mount = _mount_of(str(path), mountinfo_text)
    if mount is None or not is_network_filesystem(mount[1]):
        return
    mount_point, fstype = mount
    raise LedgerError(
        f"the ledger directory {path} is on a network or cluster filesystem ({fstype}, "
        f"mounted at {mount_point}): SQLite's WAL mode and flock locks are not safe there, "
        "so two processes could be granted the same GPU; put the ledger on local storage: "
        f"the default ({default_ledger_dir()}) or a local directory ({LEDGER_ENV}=DIR, or ledger=DIR)"
    )


# -- creating the directory, and checking that it can be used ---------------------

_ELSEWHERE = f"choose another directory ({LEDGER_ENV}=DIR, or ledger=DIR)"
_WITHOUT = f"or run without the ledger (ledger=None, or {LEDGER_ENV}=off)"


def _refuse_non_directory(path: Path, *, origin: str) -> None:
    """Refuse a file, or a dangling link, where the directory should be; a missing path is fine."""
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        if not os.path.islink(path):
            return  # missing: it will be created
        what = "is a symbolic link to a path that does not exist"
    except OSError:
        return  # cannot tell (no permission, a file as a parent): the next step says why
    else:
        if is_dir:
            return
        what = "exists and is not a directory"
    raise LedgerError(f"the ledger path {path}{origin} {what}: remove it, or {_ELSEWHERE}")


def _failure(path: Path, error: OSError, *, doing: str) -> LedgerError:
    """The :class:`LedgerError` for ``error``, met while ``doing`` something with ``path``."""
    reason = error.strerror or str(error)
    if error.errno == errno.EROFS:
        return LedgerError(
            f"the ledger directory {path} is on a read-only filesystem: the ledger writes "
            f"its database, locks and sockets there; {_ELSEWHERE} on a writable local "
            f"filesystem, {_WITHOUT}"
        )
    if error.errno in (errno.EACCES, errno.EPERM) and doing == "create":
        return LedgerError(
            f"cannot create the ledger directory {path} ({reason}): have it created once by "
            f"a user who can (`mkdir -m 1777 {path}`), or {_ELSEWHERE}, {_WITHOUT}"
        )
    if error.errno in (errno.EACCES, errno.EPERM) and doing == "open":
        return LedgerError(
            f"cannot enter the ledger directory {path} ({reason}): every process that joins "
            f"the ledger must (note that Linux does not follow a symbolic link another user "
            f"owns in a sticky directory such as /dev/shm); {_ELSEWHERE}, {_WITHOUT}"
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return LedgerError(
            f"cannot create files in the ledger directory {path} ({reason}): every process "
            f"that joins the ledger must; its owner can let every user in with "
            f"`chmod 1777 {path}` (as gpupool creates it), or {_ELSEWHERE}, {_WITHOUT}"
        )
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return LedgerError(
            f"the ledger path {path} (or a parent) is not a directory: remove what is in "
            f"the way, or {_ELSEWHERE}"
        )
    return LedgerError(
        f"cannot use the ledger directory {path} ({reason}): {_ELSEWHERE}, {_WITHOUT}"
    )


def _make_parents(directory: Path) -> None:
    """``mkdir -p`` with mode ``0o755`` whatever the umask, for the dirs it creates."""
    if os.path.lexists(directory):
        return
    _make_parents(directory.parent)
    try:
        os.mkdir(directory, PARENT_MODE)
    except FileExistsError:
        return  # made by someone else meanwhile
    os.chmod(directory, PARENT_MODE)


def _create_shared(target: Path, *, children: tuple[str, ...]) -> None:
    """Create ``target`` with ``children`` in it, all ``0o1777``, at once, unless it exists.

    Built under a temporary name and renamed into place: the rename fails if
    another process got there first (their directory is then used), and
    nobody ever sees the directory without its children or with the mode
    the umask gave it.
    """
    staging = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.mkdir(staging, 0o700)
    try:
        for child in children:
            os.mkdir(staging / child, 0o700)
            os.chmod(staging / child, SHARED_MODE)
        os.chmod(staging, SHARED_MODE)
        os.rename(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and os.path.lexists(target):
            return  # another process created it first
        raise


def _real_directory(path: Path) -> Path:
    """The real path of directory ``path``, with its symbolic links followed by the kernel."""
    flags = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except NotADirectoryError:
        _refuse_non_directory(path, origin="")
        raise LedgerError(f"the ledger path {path} is not a directory: {_ELSEWHERE}") from None
    except OSError as error:
        raise _failure(path, error, doing="open") from None
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return Path(os.path.realpath(path))  # no /proc: as good as it gets
    finally:
        os.close(fd)


def _check_writable(directory: Path) -> None:
    """Create and remove a file in ``directory``: the one test that does not lie (root, ro mounts)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".gpupool-probe-", dir=directory)
    except OSError as error:
        raise _failure(directory, error, doing="write") from None
    os.close(fd)
    try:
        os.unlink(name)
    except OSError as error:
        raise _failure(directory, error, doing="write") from None


def prepare_ledger_dir(path: Path, *, mountinfo: Path = MOUNTINFO) -> Path:
    """Make ``path`` ready to hold a ledger and return its real absolute path.

    Creates the directory and its ``members/`` where missing (see the module's
    notes on permissions) and refuses, with :class:`~gpupool.LedgerError`, a
    network filesystem, a read-only one, a directory this user cannot create
    files in and a path that is not a directory. A network filesystem is
    refused before anything is created on it.
    """
    target = Path(os.path.abspath(path))
    mounts = _read_mountinfo(mountinfo)
    # Only a guess before the directory exists (realpath reads links itself),
    # checked again below on the directory the kernel opened.
    _refuse_network(Path(os.path.realpath(target)), mounts)
    _refuse_non_directory(target, origin="")
    try:
        if not os.path.lexists(target):
            _make_parents(target.parent)
            _create_shared(target, children=(MEMBERS,))
    except OSError as error:
        raise _failure(target, error, doing="create") from None
    real = _real_directory(target)
    _refuse_network(real, mounts)
    members = real / MEMBERS
    try:
        if not os.path.lexists(members):
            _create_shared(members, children=())
    except OSError as error:
        raise _failure(real, error, doing="write") from None  # could not add members/
    _real_directory(members)
    _check_writable(real)
    _check_writable(members)
    return real
