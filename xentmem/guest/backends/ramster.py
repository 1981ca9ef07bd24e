"""RAMster (``drivers/staging/zcache/ramster``, Linux 3.9-3.12; ref §6): zcache whose pages
can live in another node's RAM, as a loadable and unloadable module.

Pages are put and compressed locally exactly as :class:`~.zcache.Zcache` does. Every
``remotify_interval`` (model seconds, at the guest's timer tick) the pages above the
``remotify_above`` watermark (percent of the local pool), oldest first, are sent to the
configured remote node (``PUT_EPH`` / ``PUT_PERS``); the local copy is dropped once that node
acknowledged the page. A GET of a remote page sends ``ASYNC_GET_AND_FREE_REQUEST`` (exclusive
gets) or ``ASYNC_GET_REQUEST`` and the faulting caller sleeps until ``ASYNC_GET_REPLY`` arrives,
at most ``get_timeout_s``: a node that does not answer in time is declared dead. The remote side
keeps such pages in foreign pools, created on demand per (node, pool). The selfshrinker, every
``selfshrink_interval``, repatriates remote persistent pages while the local pool is below
``repatriate_below`` percent and the guest has free memory. Flushes (``FLUSH``, ``FLOBJ``,
``DESTROY_POOL``) of a remote key are queued under the engine's lock behind any put of it, on
the one ordered connection to its node, so puts and flushes of one key apply in order.

The pages' states, the foreign pools and the message handlers are in :mod:`._ramster_engine`.

Modes: ``faithful`` is RAMster as it was: when a node dies the ephemeral pages remotified to it
are misses and the persistent ones are lost, counted in ``lost_pers_pages`` and reported to the
frontend as such, never answered with stale data. ``durable`` (the default) writes a persistent
page to its swap slot before remotifying it, so a death costs a disk read, never the page.

Unloading repatriates every remote page through the frontswap drain (each is fetched and
written to its swap slot), drops the ephemeral ones, waits until every queued message is sent,
then leaves the cluster; the pages this node held for others are gone with it, as on any death.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xentmem.errors import GuestError
from xentmem.guest.backends import _r2net as net
from xentmem.guest.backends._module import UnloadReport
from xentmem.guest.backends._ramster_engine import STATS, _Lost, _RamsterEngine, _SwapDisk
from xentmem.guest.backends.zcache import Zcache, _FrontswapOps
from xentmem.guest.frontswap import LOST

if TYPE_CHECKING:
    from xentmem.guest.guest import Guest

__all__ = ["MODES", "STATS", "Ramster"]

log = logging.getLogger(__name__)

MODES = ("durable", "faithful")
SYSFS_DIR = "sys/kernel/mm/ramster"
DEBUGFS_DIR = "sys/kernel/debug/ramster"
_SYNC_POLL = 0.002


class _RamsterFrontswapOps(_FrontswapOps):
    engine: _RamsterEngine

    def load(self, type: int, offset: int, page: bytearray) -> int:
        try:
            return super().load(type, offset, page)
        except _Lost:
            return LOST


class Ramster(Zcache):
    """The RAMster module of one node.

    ``node`` is this node's number and ``nodes`` the cluster (``"0=127.0.0.1:7800
    1=127.0.0.1:7801"``, at most eight; port 0 for this node: any free port), ``target`` the
    node pages are remotified to (-1: none; a memory server sets none), ``mode`` ``durable`` or
    ``faithful``. Sizes in MiB; watermarks in percent of the local pool; intervals in model
    seconds (the guest's tick), the heartbeat and timeouts in wall seconds.
    """

    name = "ramster"

    def __init__(self, *, node: int = 0, nodes: str | dict[int, str] = "", target: int = -1,
                 mode: str = "durable", cluster: str = "ramster", max_pool_mb: int = 64,
                 foreign_max_mb: int = 256, remotify_above: int = 50,
                 repatriate_below: int = 25, remotify_batch: int = 1024,
                 remotify_interval: float = 1.0, selfshrink: bool = True,
                 selfshrink_interval: float = 5.0, heartbeat_s: float = 0.5,
                 dead_s: float = 3.0, get_timeout_s: float = 2.0, frontswap: bool = True,
                 cleancache: bool = True, exclusive_gets: bool = True) -> None:
        if mode not in MODES:
            raise GuestError(f"ramster mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not (0 <= node < net.MAX_NODES):
            raise GuestError(f"ramster node must be 0..{net.MAX_NODES - 1}, not {node}")
        if not (0 <= repatriate_below <= remotify_above <= 100):
            raise GuestError("ramster needs 0 <= repatriate_below <= remotify_above <= 100")
        if min(max_pool_mb, foreign_max_mb, remotify_batch) < 1 or min(
                remotify_interval, selfshrink_interval, get_timeout_s) <= 0:
            raise GuestError("ramster sizes, batch, intervals and timeouts must be positive")
        self.node_num = node
        self.nodes = net.parse_nodes(nodes)
        self.nodes.setdefault(node, net.NodeAddress(node, "127.0.0.1", 0))
        self.mode = mode
        self.cluster = cluster
        self.foreign_max_bytes = foreign_max_mb << 20
        self.remotify_above = remotify_above
        self.repatriate_below = repatriate_below
        self.remotify_batch = remotify_batch
        self.remotify_interval = remotify_interval
        self.selfshrink = selfshrink
        self.selfshrink_interval = selfshrink_interval
        self.heartbeat_s, self.dead_s, self.get_timeout_s = heartbeat_s, dead_s, get_timeout_s
        self.node: net.Node | None = None
        self.incarnation = net.new_incarnation()
        self.guest: Guest | None = None
        self._next_remotify = self._next_selfshrink = 0.0
        super().__init__(max_pool_mb=max_pool_mb, frontswap=frontswap, cleancache=cleancache,
                         exclusive_gets=exclusive_gets)
        self.target = -1
        self.set_target(target)

    def _new_engine(self, max_bytes: int) -> _RamsterEngine:
        return _RamsterEngine(max_bytes, self)

    def _new_frontswap_ops(self) -> _RamsterFrontswapOps:
        return _RamsterFrontswapOps(self.engine)

    engine: _RamsterEngine

    # -- checkpoints --

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["node"] = None  # a restored node joins again at its first tick
        return state

    # -- configuration (ramster-tools wrote these through configfs and sysfs) --

    def set_target(self, target: int) -> None:
        """``ramster_remote_target_nodenum``: -1, or a configured node other than this one."""
        if target != -1 and (target == self.node_num or target not in self.nodes):
            raise GuestError(f"ramster target {target}: not another node of the cluster "
                             f"({', '.join(str(n) for n in sorted(self.nodes))}) (-EINVAL)")
        self.target = target

    def set_nodes(self, untrusted: str | dict[int, str]) -> None:
        """Replace the node list; this node's own entry must stay as it is."""
        nodes = net.parse_nodes(untrusted)
        mine = nodes.get(self.node_num)
        if mine is None:
            raise GuestError(f"ramster nodes: node {self.node_num} (this one) is missing")
        if self.node is not None and self.node.address is not None and (
                mine.host, mine.port) not in (self.node.address, (self.nodes[self.node_num].host,
                                                                   self.nodes[self.node_num].port)):
            raise GuestError(f"ramster nodes: this node listens on "
                             f"{self.node.address[0]}:{self.node.address[1]}")
        if self.target != -1 and self.target not in nodes:
            raise GuestError(f"ramster nodes: the target {self.target} would be missing")
        if self.node is not None and self.node.address is not None:
            nodes[self.node_num] = net.NodeAddress(self.node_num, *self.node.address)
        self.nodes = nodes
        if self.node is not None:
            self.node.set_peers(nodes)

    @property
    def address(self) -> net.NodeAddress:
        """This node's address as the others must name it (known once it listens)."""
        return self.nodes[self.node_num]

    # -- module life cycle --

    def start_node(self) -> None:
        """Join the cluster (at load, or at the first tick after a restore)."""
        if self.node is not None:
            return
        me = self.nodes[self.node_num]
        node = net.Node(self.node_num, self.cluster, self.engine, incarnation=self.incarnation,
                        heartbeat_s=self.heartbeat_s, dead_s=self.dead_s,
                        io_timeout=min(1.0, self.dead_s / 2))
        host, port = node.start(me.host, me.port)
        self.nodes[self.node_num] = net.NodeAddress(self.node_num, host, port)
        node.set_peers(self.nodes)
        self.node = node

    def module_init(self, guest: Guest) -> None:
        self.guest = guest
        self.engine.disk = _SwapDisk(guest)
        self.start_node()
        super().module_init(guest)

    def module_exit(self, guest: Guest) -> UnloadReport:
        report = super().module_exit(guest)  # the drain fetches every remote page
        self.sync(timeout=max(self.get_timeout_s, 1.0))
        deadline = time.monotonic() + self.get_timeout_s
        while self.node is not None and not self.node.idle() and time.monotonic() < deadline:
            time.sleep(_SYNC_POLL)
        self.shutdown()
        return report

    def shutdown(self) -> None:
        """Leave the cluster at once, as a crash would: the pages held for others die."""
        node, self.node = self.node, None
        if node is not None:
            node.stop()
        self.engine.kill()

    # -- periodic work (the guest's timer tick) --

    def tick(self, now: float) -> None:
        if self.node is None and self.guest is not None and self.guest.backend is self:
            try:
                self.start_node()  # restored from a checkpoint: join again
            except GuestError as exc:  # e.g. its port is taken: try again at the next tick
                log.warning("ramster node %d: %s", self.node_num, exc)
        if now >= self._next_remotify:
            self._next_remotify = now + self.remotify_interval
            self.remotify()
        if self.selfshrink and now >= self._next_selfshrink:
            self._next_selfshrink = now + self.selfshrink_interval
            self.repatriate()

    def remotify(self, limit: int | None = None) -> int:
        """Send local pages above the watermark to the target; pages sent."""
        above = self.engine.max_bytes * self.remotify_above // 100
        return self.engine.remotify(self.target, limit or self.remotify_batch, above)

    def repatriate(self, limit: int | None = None) -> int:
        """The selfshrinker: bring remote persistent pages back while local memory allows."""
        guest = self.guest
        if guest is not None and guest.free_pages <= guest.totalreserve_pages:
            return 0
        below = self.engine.max_bytes * self.repatriate_below // 100
        return self.engine.repatriate(limit or self.remotify_batch, below)

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until every PUT is acknowledged and every GET answered (or timeout)."""
        deadline = time.monotonic() + timeout
        while not self.engine.settled():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_SYNC_POLL)
        return True

    # -- statistics and the sysfs view --

    def stats(self) -> dict[str, int]:
        return self.engine.stats()

    def sysfs_files(self) -> dict[str, tuple[Callable[[], str], Callable[[str], None] | None]]:
        """Files for the guest's sysfs view: path -> (read, write or None)."""
        files: dict[str, tuple[Callable[[], str], Callable[[str], None] | None]] = {
            f"{SYSFS_DIR}/ramster_remote_target_nodenum": (lambda: f"{self.target}\n",
                                                           self._write_target),
            f"{SYSFS_DIR}/ramster_nodes": (
                lambda: " ".join(str(a) for _, a in sorted(self.nodes.items())) + "\n",
                self.set_nodes),
            f"{SYSFS_DIR}/ramster_node": (lambda: f"{self.node_num}\n", None),
            f"{SYSFS_DIR}/ramster_mode": (lambda: f"{self.mode}\n", None),
        }
        for name in STATS:
            files[f"{DEBUGFS_DIR}/{name}"] = (lambda n=name: f"{self.stats()[n]}\n", None)
        return files

    def _write_target(self, untrusted: str) -> None:
        text = untrusted.strip()
        if not (text.lstrip("-").isdigit() and len(text) < 4):
            raise GuestError(f"ramster_remote_target_nodenum: {text!r} is not a node (-EINVAL)")
        self.set_target(int(text))
