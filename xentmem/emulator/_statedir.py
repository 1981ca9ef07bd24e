"""The emulator daemon's state directory, trusted only after checks (issue 12, point 5).

A state directory holds the daemon's sockets, its lock and pid file, its log and its durable state,
so whoever controls it controls the host: they could forge ``xenstore.sock``, write through a
symlinked pid file, or name the pid that ``emulator down`` signals. The rules:

- the directory is a real directory (never a symlink), owned by our effective uid and not
  writable by group or others; a directory we create is 0700 whatever the umask;
- a small file (pid, lock) is opened with ``O_NOFOLLOW`` and used only if it is a regular file we
  own; one we write is 0600 and has no other hard link, and a refused file is never truncated;
- a socket is bound in a fresh 0700 directory of its own, given its mode there, and only then
  renamed to its name, so it is never reachable with a wider mode; a stale socket at that name is
  replaced only when it is a socket we own.

Every refusal is an ``EmulatorError`` with one line naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

from xentmem.errors import EmulatorError

__all__ = ["LOCK", "PIDFILE", "XENSTORE_SOCKET", "bind_private", "check_state_dir",
           "open_private", "prepare_state_dir", "read_private", "running", "write_private"]

# the daemon's files in it (its hypercall socket is the client's HYPERCALL_SOCKET)
XENSTORE_SOCKET = "xenstore.sock"
LOCK, PIDFILE = "daemon.lock", "daemon.pid"
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_UNIX_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
# the bind directory is named ".b" + 4 hex digits: with "/s" inside, the bound path is at most as
# long as the final one for any socket name of 8 bytes or more
_BIND_TRIES = 64


def _refuse(what: str, path: Path, reason: str) -> EmulatorError:
    return EmulatorError(f"{what} {path} {reason}; refusing to use it")


def _not_ours(what: str, path: Path, uid: int) -> EmulatorError:
    return _refuse(what, path, f"is owned by uid {uid}, not by you (uid {os.geteuid()})")


def _open_dir(path: Path) -> int:
    """An fd of directory ``path`` itself (a symlink there is refused, not followed)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        with contextlib.suppress(OSError):
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise _refuse("state directory", path, "is a symbolic link") from None
            if not stat.S_ISDIR(mode):
                raise _refuse("state directory", path, "is not a directory") from None
        raise EmulatorError(f"cannot open state directory {path}: {exc.strerror}") from None


def _check_dir_fd(fd: int, path: Path) -> os.stat_result:
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise _not_ours("state directory", path, st.st_uid)
    if st.st_mode & 0o022:
        who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002))
                           if st.st_mode & bit)
        raise _refuse("state directory", path,
                      f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})")
    return st


def _mkdir_private(path: Path, what: str = "state directory") -> bool:
    """Create ``path`` 0700 (``False`` if something is there already)."""
    try:
        os.mkdir(path, _DIR_MODE)  # the umask can only take bits away: never wider than 0700
    except FileExistsError:
        return False
    except FileNotFoundError:
        raise EmulatorError(f"cannot create {what} {path}: its parent {path.parent} "
                            "does not exist") from None
    except OSError as exc:
        raise EmulatorError(f"cannot create {what} {path}: {exc.strerror}") from None
    return True


def prepare_state_dir(path: Path, *, parents: bool = False) -> Path:
    """Create the state directory ``path`` (0700, whatever the umask) or accept an existing one
    only if it is a real directory (not a symlink) owned by us and not writable by group or
    others; returns its absolute path.

    Its parent must exist, unless ``parents``: then each missing ancestor is created 0700 as well
    (an ancestor that exists is taken as it is; only the state directory itself is checked).
    """
    path = Path(os.path.abspath(path))
    if parents:
        missing = [p for p in reversed(path.parents) if not os.path.lexists(p)]
        for ancestor in missing:
            if _mkdir_private(ancestor, "directory"):
                os.chmod(ancestor, _DIR_MODE)  # ours, made a moment ago: give back what umask took
    created = _mkdir_private(path)
    fd = _open_dir(path)
    try:
        _check_dir_fd(fd, path)
        if created:
            os.fchmod(fd, _DIR_MODE)
    finally:
        os.close(fd)
    return path


def check_state_dir(path: Path) -> None:
    """Refuse (``EmulatorError``) a state directory that ``prepare_state_dir`` would refuse: for
    readers (``running``, ``stop``, ``control``), which must not trust a pid file or socket in a
    directory someone else controls. Creates nothing; a missing directory passes (nothing in it
    can be trusted or read)."""
    path = Path(os.path.abspath(path))
    try:
        fd = _open_dir(path)
    except FileNotFoundError:
        return
    try:
        _check_dir_fd(fd, path)
    finally:
        os.close(fd)


def open_private(path: Path, flags: int, mode: int = _FILE_MODE) -> int:
    """``os.open(path, flags, mode)`` for a file of the state directory (the lock, the log): never
    through a symlink (``O_NOFOLLOW``), and only a regular file we own; when ``flags`` write, also
    one with no other hard link. ``O_TRUNC`` is applied only after these checks, so a refused file
    is left untouched. ``FileNotFoundError`` when it is missing and ``flags`` lack ``O_CREAT``."""
    path = Path(path)
    writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
    # O_NONBLOCK: a FIFO planted there must not block the open (fstat then refuses it)
    open_flags = (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, open_flags, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise EmulatorError(f"{path} is a symbolic link; refusing to follow it") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO without reader, a directory
            raise _refuse("file", path, "is not a regular file") from None
        raise EmulatorError(f"cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse("file", path, "is not a regular file")
        if st.st_uid != os.geteuid():
            raise _not_ours("file", path, st.st_uid)
        if writing and st.st_nlink != 1:
            raise _refuse("file", path, f"has {st.st_nlink} hard links")
        if flags & os.O_TRUNC:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, data: bytes | str) -> None:
    """Write a small file (the pid file) in the state directory: mode 0600, never through a
    symlink, and only over a regular file we own with no other hard link."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != _FILE_MODE:
            os.fchmod(fd, _FILE_MODE)  # a file an older version left with the umask's mode
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_private(path: Path, limit: int = 4096) -> bytes | None:
    """At most ``limit`` bytes of a small file in the state directory (the pid file), ``None``
    when it does not exist; refused when it is a symlink, not a regular file, or not ours."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_stale(path: Path) -> None:
    """Refuse anything at a socket's name but a socket we own (which the new one replaces)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise EmulatorError(f"socket path {path} is a symbolic link; refusing to replace it")
    if not stat.S_ISSOCK(st.st_mode):
        raise EmulatorError(f"socket path {path} is not a socket; refusing to replace it")
    if st.st_uid != os.geteuid():
        raise _not_ours("socket", path, st.st_uid)


def bind_private(sock: socket.socket, path: Path, mode: int = _FILE_MODE) -> None:
    """Bind the unix socket ``sock`` to ``path`` with file mode ``mode`` (0600: only we may
    connect), never reachable with a wider mode, even for an instant.

    How: it is bound in a fresh 0700 directory beside ``path`` (no one else can reach a socket
    in there, whatever mode the umask gave it), chmod'ed there, then renamed to ``path``, which
    atomically replaces a stale socket of ours. The umask is never touched: it is process-wide,
    and when the daemon binds, xenstored's and the guests' threads are already running.
    Anything else at ``path`` (a symlink, a regular file, someone else's socket) is refused and
    left as it is. After the rename ``sock.getsockname()`` still names the temporary path.
    """
    path = Path(os.path.abspath(path))
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise EmulatorError(f"state directory path too long for a unix socket: {path}")
    _check_stale(path)
    for _ in range(_BIND_TRIES):
        import secrets  # here: a client finding a daemon needs none of it (hashlib, random)

        private = path.parent / f".b{secrets.token_hex(2)}"
        if not os.path.lexists(private) and _mkdir_bind_dir(private):
            break
    else:
        raise EmulatorError(f"cannot bind {path}: no free name for a private bind directory")
    inner = private / "s"
    try:
        if len(os.fsencode(inner)) > _UNIX_PATH_MAX:
            raise EmulatorError(f"state directory path too long for a unix socket: {path}")
        try:
            sock.bind(str(inner))
            os.chmod(inner, mode)
            _check_stale(path)  # again, just before it is replaced
            os.rename(inner, path)
        except OSError as exc:
            raise EmulatorError(f"cannot bind {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(inner)
        with contextlib.suppress(OSError):
            os.rmdir(private)


def _mkdir_bind_dir(private: Path) -> bool:
    try:
        os.mkdir(private, _DIR_MODE)
    except FileExistsError:  # another thread's bind directory: try another name
        return False
    except OSError as exc:
        raise EmulatorError(f"cannot bind a socket in {private.parent}: {exc.strerror}") from None
    os.chmod(private, _DIR_MODE)  # the umask may have taken our own bits
    return True


def running(directory: Path) -> int | None:
    """The pid of the daemon running in ``directory`` (0 if unknown), or ``None``."""
    check_state_dir(directory)  # never trust (nor signal) what another user planted
    try:
        fd = open_private(directory / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int((read_private(directory / PIDFILE) or b"").strip() or 0)
        except ValueError:
            return 0
    finally:
        os.close(fd)  # also drops the lock if we got it
    return None
