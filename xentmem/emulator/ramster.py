"""RAMster clusters of emulated guests: guests of one or more :class:`EmulatedMachine` (in
one process, or in several daemons) whose RAMster nodes share their RAM over loopback TCP.

``form_cluster([server, client, ...])`` loads the ``ramster`` backend on each guest (node ``i``
is the ``i``-th guest), tells every node where the others listen and points every node but the
server at it, all through the guests' sysfs files, as ``ramster-tools`` configured a real
cluster. Nodes with fixed addresses (``nodes = "0=127.0.0.1:17800 ..."`` in their parameters)
find each other by themselves, across daemons too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from xentmem.emulator.machine import MachineGuest
from xentmem.errors import GuestError
from xentmem.guest import Ramster, SysfsView
from xentmem.guest.backends.ramster import SYSFS_DIR

__all__ = ["form_cluster", "kill", "link", "ramster_of", "wait_joined"]


def ramster_of(mg: MachineGuest) -> Ramster:
    """The guest's RAMster module (``GuestError`` if it runs another backend)."""
    backend = mg.guest.backend
    if not isinstance(backend, Ramster):
        raise GuestError(f"guest {mg.name} does not run ramster")
    return backend


def link(guests: Iterable[MachineGuest]) -> None:
    """Write into every RAMster node among ``guests`` the addresses the others listen on
    (merged with the nodes it knows already, e.g. those of other daemons)."""
    members = [(mg, ramster_of(mg)) for mg in guests if isinstance(mg.guest.backend, Ramster)]
    known = {r.node_num: r.address for _, r in members}
    for mg, r in members:
        nodes = {**r.nodes, **known}
        with mg.machine.model_lock:
            SysfsView(mg.guest).write(f"{SYSFS_DIR}/ramster_nodes",
                                      " ".join(str(a) for _, a in sorted(nodes.items())))


def form_cluster(guests: Sequence[MachineGuest], *, server: int = 0,
                 params: Mapping[str, Any] | None = None) -> list[Ramster]:
    """Load RAMster on ``guests`` (node ``i`` = ``guests[i]``, replacing and draining any
    backend they run), link them, and make every node but ``server`` remotify to it."""
    if not 2 <= len(guests) <= 8:
        raise GuestError(f"a ramster cluster has 2 to 8 nodes, not {len(guests)}")
    modules = []
    for i, mg in enumerate(guests):
        module = mg.backend("ramster", {**(params or {}), "node": i, "target": -1})
        with mg.machine.model_lock:
            mg.guest.load_backend(module, replace=mg.guest.backend is not None)
        modules.append(module)  # type: ignore[arg-type]
    link(guests)
    for i, mg in enumerate(guests):
        if i != server:
            with mg.machine.model_lock:
                SysfsView(mg.guest).write(f"{SYSFS_DIR}/ramster_remote_target_nodenum",
                                          str(server))
    return modules  # type: ignore[return-value]


def wait_joined(guests: Iterable[MachineGuest], timeout: float = 10.0) -> bool:
    """Wait until every RAMster node among ``guests`` sees each of the others alive."""
    members = [ramster_of(mg) for mg in guests]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(r.node is not None and all(r.node.alive(o.node_num) for o in members if o is not r)
               for r in members):
            return True
        time.sleep(0.01)
    return False


def kill(mg: MachineGuest) -> dict[str, Any]:
    """Kill the guest: its node dies with the pages it held for others, its domain goes;
    the guest's last report."""
    ramster_of(mg).shutdown()
    return mg.machine.remove_guest(mg.domid)
