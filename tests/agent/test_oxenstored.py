"""The toggle loop on the real oxenstored (Debian xen-utils 4.17, started without a hypervisor by
``vm-images/oxenstored/run``): dom0 on its socket, the agent as the guest through the fake
shared-memory ring, so the real server's permission model holds our key layout to account.
Skips with the reason where oxenstored cannot run (not root, no unshare)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xentmem.agent import Agent, ModelSink, XenStoreTargetSource
from xentmem.errors import XenStorePermission
from xentmem.guest import Guest
from xentmem.guest.selfballoon import MB
from xentmem.host.guests import Host
from xentmem.xenstore import XenStoreClient, layout_domain
from xentmem.xenstore.testing import Oxenstored, unavailable_reason

from ._wait import eventually

pytestmark = pytest.mark.oxenstored
DOMID = 11


@pytest.fixture(scope="module")
def ox() -> Iterator[Oxenstored]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"real oxenstored unavailable: {reason}")
    work = Path(tempfile.mkdtemp(prefix="xtag-ox-", dir="/tmp"))
    server = Oxenstored(work, ring=True, quiet=True).start()
    yield server
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


def test_toggle_loop_on_real_oxenstored(ox: Oxenstored):
    dom0 = XenStoreClient(ox.socket_path, timeout=5)
    layout_domain(dom0, DOMID, "oxguest", 131072, 262144)
    guest_xs = XenStoreClient(ox.guest_socket(DOMID), timeout=5)  # the ring's one connection
    guest = Guest("oxguest", memory_mb=128, max_memory_mb=256)  # no tmem module loaded
    target = XenStoreTargetSource(guest_xs)
    guest.attach_target(target)
    agent = Agent(guest_xs, ModelSink(guest), stats_interval=0.2).start(wait=5)
    try:
        host = Host(dom0, ack_timeout=5)
        result = host.set_toggles("oxguest", {"interval": 8, "selfballooning": True})
        assert result.status == "applied", result
        assert guest.selfballoon.knobs.interval == 8 and guest.selfballoon.knobs.selfballooning
        refused = host.set_toggles(DOMID, {"cleancache": False})
        assert refused.status == "refused" and "not loaded" in refused.reason
        with pytest.raises(XenStorePermission):
            guest_xs.write("control/tmem/seq", "99")  # control/ is dom0's on the real server too
        assert host.set_memory_target("oxguest", 112 * 1024).via == "xenstore"
        assert eventually(lambda: guest.balloon.stats.target_pages == 112 * MB)
        info = host.guest("oxguest")
        assert info.tmem is not None and info.tmem.sink == "model"
        assert info.tmem.applied["interval"] == 8
    finally:
        agent.stop()
        target.close()
        guest_xs.close()
        dom0.close()
