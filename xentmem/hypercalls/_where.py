"""Where the hypercall transports are found, with no ABI in sight: the privcmd device, and the
emulator daemon's state directory, socket and URI. The CLI names a host with these before any
hypercall, so naming one (``xentmem status -c emulator:DIR``) does not load cffi and the ABI.
"""

from __future__ import annotations

import os
from pathlib import Path

from xentmem.errors import EmulatorError

__all__ = ["DEFAULT_TIMEOUT", "HYPERCALL_SOCKET", "PRIVCMD_PATHS", "ROOT_STATE_DIR",
           "default_state_dir", "parse_uri", "socket_path"]

PRIVCMD_PATHS = ("/dev/xen/privcmd", "/proc/xen/privcmd")  # where PrivcmdHypervisor looks
HYPERCALL_SOCKET = "hypercall.sock"
ROOT_STATE_DIR = Path("/run/xentmem")  # root's default state directory
DEFAULT_TIMEOUT = 10.0  # seconds per request; a daemon snapshotting a big host may take a while


def default_state_dir() -> Path:
    """Where the daemon keeps its sockets and state: ``$XENTMEM_STATE``, else ``/run/xentmem``
    for root, else ``$XDG_RUNTIME_DIR/xentmem``, else ``/run/user/<uid>/xentmem`` when that
    runtime directory exists and is ours, else ``$XDG_CACHE_HOME/xentmem/run`` (default
    ``~/.cache/xentmem/run``). Never a predictable name in a shared directory such as ``/tmp``,
    which another local user could create first (the daemon checks the directory before use)."""
    import stat

    env = os.environ.get("XENTMEM_STATE")
    if env:
        return Path(env)
    uid = os.geteuid()
    if uid == 0:
        return ROOT_STATE_DIR
    # the XDG base directory spec: a relative XDG_* path is invalid and must be ignored
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return Path(runtime) / "xentmem"
    run_user = f"/run/user/{uid}"
    try:
        st = os.stat(run_user)  # one stat: this runs at every CLI start
    except OSError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022:
            return Path(run_user) / "xentmem"
    cache = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):
        home = os.path.expanduser("~")  # $HOME, else the password database
        if not os.path.isabs(home):
            raise EmulatorError(f"no state directory for uid {uid}: no home directory; set "
                                "XENTMEM_STATE or XDG_RUNTIME_DIR")
        cache = os.path.join(home, ".cache")
    return Path(cache) / "xentmem" / "run"


def socket_path(location: str | os.PathLike[str] | None) -> Path:
    """The hypercall socket for a socket path, a state directory, or ``None`` (the default)."""
    path = default_state_dir() if location is None or str(location) == "" else Path(location)
    return path / HYPERCALL_SOCKET if path.is_dir() else path


def parse_uri(rest: str) -> tuple[str | None, int, float]:
    """The location (``None``: the default state directory), domid and timeout named by
    ``emulator:[SOCKET|STATE_DIR][?domid=N&timeout=S]`` (``rest`` is what follows
    ``emulator:``); ``ValueError`` for a malformed one."""
    location, _, query = rest.partition("?")
    params = dict(pair.partition("=")[::2] for pair in query.split("&") if pair)
    unknown = set(params) - {"domid", "timeout"}
    if unknown:
        raise ValueError(f"unknown emulator URI parameter(s) {', '.join(sorted(unknown))}: "
                         "expected domid=N, timeout=SECONDS")
    try:
        domid = int(params.get("domid", "0"))
        timeout = float(params.get("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        raise ValueError(f"bad emulator URI parameters {query!r}: expected domid=N, "
                         "timeout=SECONDS") from None
    if not 0 <= domid < 0x7FF0:
        raise ValueError(f"domid must be 0..32751, not {domid}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout}")
    return location or None, domid, timeout
