"""The daemon's state directory is trusted only after checks (issue 12, point 5).

The hostile cases are built as root with ``os.chown`` to another uid (``nobody``, 65534) and
``os.chmod``; as another user they are the directories and files a local attacker would leave.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentmem.emulator._statedir import (
    bind_private,
    check_state_dir,
    open_private,
    prepare_state_dir,
    read_private,
    write_private,
)
from xentmem.errors import EmulatorError
from xentmem.hypercalls import socket as socket_mod
from xentmem.hypercalls.socket import default_state_dir

OTHER_UID = 65534  # nobody

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A private directory to build in (pytest's own tmp_path is 0700 and ours)."""
    return tmp_path


# ---- the directory -----------------------------------------------------------------------------


def test_a_fresh_state_dir_is_created_0700_under_umask_0(base: Path):
    with umask(0):
        got = prepare_state_dir(base / "state")
    assert got == base / "state"
    assert mode_of(got) == 0o700


def test_a_fresh_state_dir_is_0700_even_when_the_umask_takes_our_own_bits(base: Path):
    with umask(0o277):
        prepare_state_dir(base / "state")
    assert mode_of(base / "state") == 0o700


def test_the_path_returned_is_absolute(base: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(base)
    assert prepare_state_dir(Path("state")) == base / "state"


def test_missing_parents_are_refused_unless_asked_for_then_made_0700(base: Path):
    with pytest.raises(EmulatorError, match=r"its parent .*/a/b does not exist$"):
        prepare_state_dir(base / "a" / "b" / "state")
    assert not (base / "a").exists()
    with umask(0):
        prepare_state_dir(base / "a" / "b" / "state", parents=True)
    assert [mode_of(base / p) for p in ("a", "a/b", "a/b/state")] == [0o700] * 3


@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755, 0o1700])
def test_an_existing_dir_of_ours_not_writable_by_others_is_accepted_as_it_is(base: Path,
                                                                            mode: int):
    (base / "state").mkdir()
    os.chmod(base / "state", mode)
    assert prepare_state_dir(base / "state") == base / "state"
    check_state_dir(base / "state")
    assert mode_of(base / "state") == mode


@pytest.mark.parametrize("check", [prepare_state_dir, check_state_dir])
def test_a_symlinked_state_dir_is_refused(base: Path, check):
    (base / "real").mkdir(mode=0o700)  # ours and private: still not followed
    (base / "state").symlink_to(base / "real")
    with pytest.raises(EmulatorError, match=r"^state directory .*/state is a symbolic link; "
                                            r"refusing to use it$"):
        check(base / "state")
    (base / "dangling").symlink_to(base / "nowhere")
    with pytest.raises(EmulatorError, match="is a symbolic link"):
        check(base / "dangling")
    assert not (base / "nowhere").exists()


@needs_root
@pytest.mark.parametrize("check", [prepare_state_dir, check_state_dir])
def test_a_state_dir_owned_by_another_uid_is_refused(base: Path, check):
    (base / "state").mkdir(mode=0o700)
    os.chown(base / "state", OTHER_UID, OTHER_UID)
    with pytest.raises(EmulatorError) as info:
        check(base / "state")
    assert str(info.value) == (f"state directory {base / 'state'} is owned by uid {OTHER_UID}, "
                               f"not by you (uid {os.geteuid()}); refusing to use it")


@pytest.mark.parametrize(("mode", "who"), [(0o770, "group"), (0o707, "others"),
                                           (0o777, "group and others"),
                                           (0o1777, "group and others")])
@pytest.mark.parametrize("check", [prepare_state_dir, check_state_dir])
def test_a_state_dir_writable_by_group_or_others_is_refused(base: Path, check, mode: int,
                                                            who: str):
    (base / "state").mkdir()
    os.chmod(base / "state", mode)
    with pytest.raises(EmulatorError, match=rf"is writable by {who} \(mode {mode:04o}\); "
                                            "refusing to use it$"):
        check(base / "state")
    assert mode_of(base / "state") == mode  # refused, not "fixed"


def test_a_file_where_the_state_dir_should_be_is_refused(base: Path):
    (base / "state").write_text("")
    with pytest.raises(EmulatorError, match=r"is not a directory; refusing to use it$"):
        prepare_state_dir(base / "state")


def test_check_state_dir_creates_nothing(base: Path):
    check_state_dir(base / "state")  # nothing there: nothing to trust, nothing to refuse
    assert not (base / "state").exists()


# ---- small files (pid, lock) -------------------------------------------------------------------


def test_write_private_writes_0600_under_umask_0(base: Path):
    with umask(0):
        write_private(base / "daemon.pid", "123\n")
    assert (base / "daemon.pid").read_bytes() == b"123\n"
    assert mode_of(base / "daemon.pid") == 0o600


def test_write_private_truncates_and_tightens_a_file_of_ours(base: Path):
    (base / "daemon.pid").write_text("99999999\n")
    os.chmod(base / "daemon.pid", 0o644)
    write_private(base / "daemon.pid", b"7\n")
    assert (base / "daemon.pid").read_bytes() == b"7\n"
    assert mode_of(base / "daemon.pid") == 0o600


def test_a_symlinked_pid_file_is_refused_and_its_target_untouched(base: Path):
    victim = base / "victim"
    victim.write_text("precious\n")
    (base / "daemon.pid").symlink_to(victim)
    with pytest.raises(EmulatorError, match=r"daemon\.pid is a symbolic link; refusing to "
                                            "follow it$"):
        write_private(base / "daemon.pid", "123\n")
    assert victim.read_text() == "precious\n"
    with pytest.raises(EmulatorError, match="is a symbolic link"):
        read_private(base / "daemon.pid")


def test_a_dangling_symlinked_pid_file_creates_nothing(base: Path):
    (base / "daemon.pid").symlink_to(base / "created-by-us")
    with pytest.raises(EmulatorError, match="is a symbolic link"):
        write_private(base / "daemon.pid", "123\n")
    assert not (base / "created-by-us").exists()


@needs_root
def test_a_foreign_owned_pid_file_is_refused_and_left_untouched(base: Path):
    (base / "daemon.pid").write_text("1\n")  # "please signal init"
    os.chown(base / "daemon.pid", OTHER_UID, OTHER_UID)
    with pytest.raises(EmulatorError) as info:
        read_private(base / "daemon.pid")
    assert str(info.value) == (f"file {base / 'daemon.pid'} is owned by uid {OTHER_UID}, not by "
                               f"you (uid {os.geteuid()}); refusing to use it")
    with pytest.raises(EmulatorError, match="is owned by uid 65534"):
        write_private(base / "daemon.pid", "123\n")
    assert (base / "daemon.pid").read_text() == "1\n"  # not truncated by the refused open


def test_a_hard_link_is_not_written_through(base: Path):
    (base / "elsewhere").write_text("precious\n")
    os.link(base / "elsewhere", base / "daemon.pid")
    with pytest.raises(EmulatorError, match=r"has 2 hard links; refusing to use it$"):
        write_private(base / "daemon.pid", "123\n")
    assert (base / "elsewhere").read_text() == "precious\n"


@pytest.mark.parametrize("how", [read_private, lambda p: write_private(p, "1\n")])
def test_a_fifo_or_directory_is_refused_without_blocking(base: Path, how):
    os.mkfifo(base / "daemon.pid")
    os.mkdir(base / "daemon.lock")
    for path in (base / "daemon.pid", base / "daemon.lock"):
        with pytest.raises(EmulatorError, match=r"is not a regular file; refusing to use it$"):
            how(path)


def test_read_private(base: Path):
    assert read_private(base / "daemon.pid") is None
    (base / "daemon.pid").write_bytes(b"x" * 10_000)
    assert read_private(base / "daemon.pid") == b"x" * 4096
    assert read_private(base / "daemon.pid", limit=3) == b"xxx"


def test_open_private_for_the_lock(base: Path):
    fd = open_private(base / "daemon.lock", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    assert mode_of(base / "daemon.lock") == 0o600
    with pytest.raises(FileNotFoundError):
        open_private(base / "missing", os.O_RDWR)


# ---- sockets -----------------------------------------------------------------------------------


class SpySocket(socket.socket):
    """Records, when ``bind`` returns, the mode of the directory the socket was bound in and
    whether anything is at ``final`` yet."""

    final: Path
    seen: list[tuple[int, bool]]

    def bind(self, address) -> None:  # type: ignore[override]
        super().bind(address)
        self.seen.append((mode_of(Path(address).parent), os.path.lexists(self.final)))


def test_a_socket_bound_under_umask_0_is_0600_and_never_wider(base: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    os.chmod(base, 0o755)  # a directory others may search: the socket's own mode is the boundary
    path = base / "hypercall.sock"
    renames: list[int] = []
    real_rename = os.rename

    def spy_rename(src, dst, *a, **kw):
        if Path(dst) == path:
            renames.append(mode_of(Path(src)))
        return real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", spy_rename)
    sock = SpySocket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.final, sock.seen = path, []
    with sock, umask(0):
        bind_private(sock, path)
        st = os.lstat(path)  # right after bind_private returns
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        # bound where no one else can reach it, while nothing was at the final name; it got
        # there already 0600
        assert sock.seen == [(0o700, False)]
        assert renames == [0o600]
        sock.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
    assert sorted(p.name for p in base.iterdir()) == ["hypercall.sock"]  # no bind dir left


def test_a_stale_socket_of_ours_is_replaced(base: Path):
    path = base / "hypercall.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        bind_private(sock, path, mode=0o660)
        sock.listen(1)
        assert mode_of(path) == 0o660
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))


def test_a_stale_symlink_at_the_socket_path_is_refused_not_followed_or_removed(base: Path):
    victim = base / "victim"
    victim.write_text("precious\n")
    path = base / "hypercall.sock"
    path.symlink_to(victim)
    with (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
          pytest.raises(EmulatorError, match=r"hypercall\.sock is a symbolic link; refusing "
                                             r"to replace it$")):
        bind_private(sock, path)
    assert path.is_symlink() and os.readlink(path) == str(victim)
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in base.iterdir()) == ["hypercall.sock", "victim"]


def test_a_regular_file_at_the_socket_path_is_refused(base: Path):
    (base / "hypercall.sock").write_text("mine\n")
    with (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
          pytest.raises(EmulatorError, match=r"is not a socket; refusing to replace it$")):
        bind_private(sock, base / "hypercall.sock")
    assert (base / "hypercall.sock").read_text() == "mine\n"


@needs_root
def test_someone_elses_socket_at_the_socket_path_is_refused(base: Path):
    path = base / "xenstore.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as forged:
        forged.bind(str(path))
    os.chown(path, OTHER_UID, OTHER_UID)
    with (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
          pytest.raises(EmulatorError, match="is owned by uid 65534")):
        bind_private(sock, path)
    assert os.lstat(path).st_uid == OTHER_UID


# ---- the default location ----------------------------------------------------------------------


@pytest.fixture
def user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A non-root user with no XDG variables set and no ``/run/user/<uid>``; returns $HOME."""
    for name in ("XENTMEM_STATE", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real_stat = os.stat

    def stat_(path, *a, **kw):
        if str(path) == "/run/user/4242":
            raise FileNotFoundError(path)
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(socket_mod.os, "stat", stat_)
    return tmp_path / "home"


def fake_run_user(monkeypatch: pytest.MonkeyPatch, uid: int, mode: int) -> None:
    real_stat = os.stat
    fake = os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, uid, 40, 0, 0, 0))
    monkeypatch.setattr(socket_mod.os, "stat", lambda path, *a, **kw: fake
                        if str(path) == "/run/user/4242" else real_stat(path, *a, **kw))


def test_default_state_dir_named_or_root(monkeypatch: pytest.MonkeyPatch, user: Path):
    monkeypatch.setenv("XENTMEM_STATE", "/srv/x")
    assert default_state_dir() == Path("/srv/x")
    monkeypatch.delenv("XENTMEM_STATE")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/run/xentmem")


def test_default_state_dir_for_a_user(monkeypatch: pytest.MonkeyPatch, user: Path):
    assert default_state_dir() == user / ".cache" / "xentmem" / "run"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert default_state_dir() == user / ".cache" / "xentmem" / "run"
    monkeypatch.setenv("XDG_CACHE_HOME", "/c")
    assert default_state_dir() == Path("/c/xentmem/run")
    fake_run_user(monkeypatch, 4242, 0o700)
    assert default_state_dir() == Path("/run/user/4242/xentmem")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative")
    assert default_state_dir() == Path("/run/user/4242/xentmem")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    assert default_state_dir() == Path("/run/user/4242/xentmem")


@pytest.mark.parametrize(("uid", "mode"), [(OTHER_UID, 0o700), (4242, 0o777)])
def test_a_run_user_dir_not_ours_is_passed_over(monkeypatch: pytest.MonkeyPatch, user: Path,
                                                uid: int, mode: int):
    fake_run_user(monkeypatch, uid, mode)
    assert default_state_dir() == user / ".cache" / "xentmem" / "run"


def test_default_state_dir_is_never_under_tmp_for_a_user(monkeypatch: pytest.MonkeyPatch,
                                                          user: Path):
    monkeypatch.setenv("HOME", "/home/someone")
    assert not str(default_state_dir()).startswith("/tmp")
    monkeypatch.delenv("HOME")  # then the password database, and no home at all: refused
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)
    with pytest.raises(EmulatorError, match=r"no home directory; set XENTMEM_STATE or "
                                            r"XDG_RUNTIME_DIR$"):
        default_state_dir()


@needs_root
def test_the_daemon_refuses_a_state_dir_another_user_owns(tmp_path: Path) -> None:
    """Wired in: `emulator up` and the readers (`running`, `stop`, `control`) refuse it."""
    from xentmem.emulator import daemon

    foreign = tmp_path / "state"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)
    pid_file = foreign / "daemon.pid"
    with pytest.raises(EmulatorError, match="owned by uid 65534"):
        daemon.start(foreign, daemon.HostConfig())
    with pytest.raises(EmulatorError, match="owned by uid 65534"):
        daemon.stop(foreign)
    assert not pid_file.exists()
