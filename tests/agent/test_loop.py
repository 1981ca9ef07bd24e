"""The admin's toggle loop end to end (DESIGN §4 flows 3-4): dom0 client -> our xenstored ->
the agent connected *as the guest domain* on its own socket -> the emulated guest model or a
sysfs tree -> data/tmem -> the host facade reads it back. Nothing here is faked."""

from __future__ import annotations

import time

import pytest

from xentmem.agent import Agent, ModelSink, SysfsSink
from xentmem.emulator.machine import GuestSpec, MachineGuest
from xentmem.errors import XenStorePermission
from xentmem.guest import Guest, SysfsView
from xentmem.guest.selfballoon import MB
from xentmem.host.guests import SILENT_SLACK_S, Host
from xentmem.xenstore import XenStoreClient, XenStoreServer

from ._wait import eventually

SB = "sys/devices/system/xen_memory/xen_memory0/selfballoon"


def test_model_guest_applies_knobs_and_reports_them(host: Host, web: MachineGuest):
    result = host.set_toggles("web", {"interval": 7, "uphysteresis": 2, "selfballooning": True,
                                      "reserved_mb": 64})
    assert result.status == "applied", result
    assert result.reason == "" and result.refused == {}
    knobs = web.guest.selfballoon.knobs
    assert (knobs.interval, knobs.uphysteresis, knobs.reserved_mb, knobs.selfballooning) == (
        7, 2, 64, True)
    report = host.guest(web.domid).tmem
    assert report is not None and report.status == "applied" and report.sink == "model"
    assert report.applied["interval"] == 7 and report.applied["reserved_mb"] == 64
    assert report.requested == {"interval": 7, "uphysteresis": 2, "selfballooning": 1,
                                "reserved_mb": 64}
    assert report.seq == report.requested_seq == result.seq


def test_frontswap_off_reloads_the_backend_and_drains(host: Host, web: MachineGuest):
    g = web.guest
    g.swapon(4096)
    pids = g.alloc_anon(64)
    for pid in pids:
        assert g.swap_out(pid)
    assert g.frontswap.curr_pages() == 64  # the pages went to tmem, not the swap device
    result = host.set_toggles(web.domid, {"frontswap": False})
    assert result.status == "applied", result
    assert g.backend is not None and g.backend.params["frontswap"] is False
    assert g.frontswap.curr_pages() == 0 and g.stats.drained == 64
    assert g.verify_anon() == 64  # every page still reads back right
    # without frontswap the tmem module forces both self-balloon flags off (ref §3.2)
    assert result.applied["selfballooning"] == 0 and result.applied["selfshrinking"] == 0
    assert host.set_toggles(web.domid, {"frontswap": True}).status == "applied"
    assert g.backend.params["frontswap"] is True


def test_sysfs_guest_writes_the_kernel_files(host: Host, db: MachineGuest):
    assert isinstance(db.sink, SysfsSink)
    root = db.sink.root
    assert (root / SB / "selfballoon_interval").read_text() == "5\n"
    result = host.set_toggles("db", {"interval": 11, "downhysteresis": 4,
                                     "selfballooning": False})
    assert result.status == "applied", result
    assert (root / SB / "selfballoon_interval").read_text() == "11\n"
    assert (root / SB / "selfballoon_downhysteresis").read_text() == "4\n"
    assert (root / SB / "selfballooning").read_text() == "0\n"
    # what the agent wrote is what the kernel accepts: feed the files to the model's parser
    view = SysfsView(db.guest)
    for name in ("selfballoon_interval", "selfballoon_downhysteresis", "selfballooning"):
        view.write(f"{SB}/{name}", (root / SB / name).read_text())
    knobs = db.guest.selfballoon.knobs
    assert (knobs.interval, knobs.downhysteresis, knobs.selfballooning) == (11, 4, False)
    # the self-shrink knobs the tuner recommends, by their own file names
    shrink = host.set_toggles("db", {"frontswap_hysteresis": 9, "frontswap_inertia": 7})
    assert shrink.status == "applied", shrink
    assert (root / SB / "frontswap_hysteresis").read_text() == "9\n"
    assert (root / SB / "frontswap_inertia").read_text() == "7\n"
    assert shrink.applied["frontswap_inertia"] == 7


def test_sysfs_guest_refuses_module_parameters(host: Host, db: MachineGuest):
    param = db.sink.root / "sys/module/tmem/parameters/frontswap"
    assert param.read_text() == "Y\n"
    result = host.set_toggles("db", {"frontswap": False, "interval": 6})
    assert result.status == "refused"
    assert "read-only" in result.refused["frontswap"] and "tmem.frontswap=0" in result.reason
    assert "interval" not in result.refused  # the rest of the request still applies
    assert param.read_text() == "Y\n"
    assert result.applied["frontswap"] == 1 and result.applied["interval"] == 6
    assert host.tmem_report(db.domid).status == "refused"  # the standing request
    # asking for what the guest already has is fine
    assert host.set_toggles("db", {"frontswap": True}).status == "applied"
    assert host.tmem_report(db.domid).status == "applied"
    # or withdraw a request the guest cannot meet
    host.set_toggles("db", {"cleancache": False})
    withdrawn = host.set_toggles("db", {"cleancache": None})
    assert withdrawn.status == "applied" and withdrawn.rows()[0]["status"] == "withdrawn"
    report = host.tmem_report(db.domid)
    assert report.status == "applied" and "cleancache" not in report.requested


def test_kernel_rejects_zero_once_set(host: Host, web: MachineGuest):
    assert host.set_toggles("web", {"reserved_mb": 0}).status == "applied"  # already 0
    assert host.set_toggles("web", {"reserved_mb": 32}).status == "applied"
    result = host.set_toggles("web", {"reserved_mb": 0})
    assert result.status == "refused"
    assert "rejects 0" in result.refused["reserved_mb"]
    assert web.guest.selfballoon.knobs.reserved_mb == 32


@pytest.mark.parametrize("path, value, why", [
    ("control/selfballoon/interval", b"abc", "'abc' is not an integer in [1, 3600]"),
    ("control/selfballoon/interval", b"0", "is not an integer in [1, 3600]"),
    ("control/selfballoon/interval", b"99999999999999999999999", "is not an integer"),
    ("control/tmem/frontswap", b"2", "'2' is not 0 or 1"),
    ("control/tmem/cleancache", b"\x00\xff\x01", "unprintable"),
])
def test_garbage_in_control_is_refused_and_changes_nothing(
        dom0: XenStoreClient, host: Host, web: MachineGuest, path: str, value: bytes, why: str):
    """An admin's raw ``xenstore-write`` skips the CLI's checks; the agent holds the line."""
    before = web.guest.selfballoon.knobs
    params = dict(web.guest.backend.params)
    base = f"/local/domain/{web.domid}"
    dom0.write(f"{base}/{path}", value)
    dom0.write(f"{base}/control/tmem/seq", "41")
    assert eventually(lambda: host.tmem_report(web.domid).seq == 41)
    report = host.tmem_report(web.domid)
    assert report.state == "refused" and report.status == "refused"
    name = path.rsplit("/", 1)[1]
    assert why in report.refused[name]
    assert web.guest.selfballoon.knobs == before and web.guest.backend.params == params


def test_junk_in_data_is_reported_sanitised(server: XenStoreServer, host: Host, emulated_host):
    """A guest may write anything under its data/ (no agent runs here: the guest itself is
    hostile). The host reads it back through the sanitiser and never crashes."""
    domid = emulated_host.create_domain("evil", 64, 64)
    server.introduce_domain(domid, "evil", 65536, 65536)
    evil = XenStoreClient(server.domain_socket(domid), timeout=5)
    try:
        junk = {"data/tmem/state": b"applied\x00; rm -rf /", "data/tmem/seq": b"-1",
                "data/tmem/frontswap": b"maybe", "data/tmem/selfballoon/interval": b"1e9",
                "data/tmem/reason": b"\x1b[31mred\x1b[0m", "data/tmem/sink": b"sysfs2",
                "data/tmem/stats/frontswap_loads": b"99999999999999999999999999",
                "data/tmem/balloon/current_kib": b"0x100", "data/tmem/refused/evil": b"x",
                "data/tmem/refused/interval": b"\xff" * 1000, "name": b"pwned",
                "data/tmem/heartbeat": b"soon", "data/tmem/heartbeat_interval": b"0"}
        for path, value in junk.items():
            if path == "name":
                with pytest.raises(XenStorePermission):
                    evil.write(path, value)  # the toolstack's node: read-only to the guest
            else:
                evil.write(path, value)
        info = host.guest("evil")
        t = info.tmem
        assert info.name == "evil" and t is not None
        assert (t.state, t.seq, t.reason, t.sink) == (None, None, None, None)
        assert t.applied["frontswap"] is None and t.applied["interval"] is None
        assert t.stats["frontswap_loads"] is None and t.balloon["current_kib"] is None
        assert t.refused == {"interval": "(unreadable reason)"}  # unknown key names dropped
        assert (t.heartbeat_age_s, t.heartbeat_interval) == (None, None)
        assert t.status == "no agent" and info.row()["agent"] == "no agent"
        assert info.memory_kib == 65536  # memory/target (toolstack's), not the junk
        result = host.set_toggles("evil", {"interval": 9}, timeout=0.2)
        assert result.status == "pending"
    finally:
        evil.close()


def test_guest_cannot_write_control(server: XenStoreServer, web: MachineGuest, machine):
    with pytest.raises(XenStorePermission):
        web.xs.write("control/tmem/frontswap", "0")
    with pytest.raises(XenStorePermission):
        web.xs.write("control/tmem/seq", "1000")
    with pytest.raises(XenStorePermission):
        web.xs.write("memory/target", "1")
    other = machine.add_guest(GuestSpec("other", 64, backend="tmem"))
    with pytest.raises(XenStorePermission):  # nor another guest's data
        web.xs.write(f"/local/domain/{other.domid}/data/tmem/state", "applied")


def test_no_agent_is_pending_then_applied_when_it_starts(host: Host, machine):
    g = machine.add_guest(GuestSpec("late", 64, 128, backend="tmem", agent=False))
    result = host.set_toggles("late", {"interval": 13}, timeout=0.3)
    assert result.status == "pending" and "no answer" in result.reason
    assert host.guest("late").tmem.status == "no agent"
    g.start_agent()  # the request waits in control/ and is applied when the agent comes
    assert eventually(lambda: host.tmem_report(g.domid).status == "applied")
    assert g.guest.selfballoon.knobs.interval == 13


def test_agent_reconnects_after_xenstored_restarts(host: Host, web: MachineGuest,
                                                   server: XenStoreServer):
    server.stop()
    server.start()  # the store survives in-process; every connection was dropped
    result = host.set_toggles("web", {"interval": 17}, timeout=10)
    assert result.status == "applied", result
    assert web.guest.selfballoon.knobs.interval == 17


def test_memory_target_reaches_the_balloon_driver(host: Host, web: MachineGuest):
    result = host.set_memory_target("web", 96 * 1024, wait=10)
    assert (result.via, result.previous_kib, result.target_kib) == ("xenstore", 131072, 98304)
    assert (result.status, result.guest_target_kib) == ("applied", 98304)
    assert "self-ballooning is on" in result.note  # the tmem module's default (ref §3.1)
    balloon = web.guest.balloon.stats
    assert eventually(lambda: balloon.target_pages == 96 * MB)
    assert balloon.current_pages == 96 * MB  # there was room: the balloon inflated at once
    assert eventually(lambda: host.guest("web").tmem.balloon == {"current_kib": 98304,
                                                                 "target_kib": 98304})
    assert host.guest("web").memory_kib == 98304
    with pytest.raises(ValueError, match="above the maximum"):
        host.set_memory_target("web", 257 * 1024)
    host.set_toggles("web", {"selfballooning": False})
    grow = host.set_memory_target("web", 112 * 1024, wait=10)
    assert (grow.status, grow.note) == ("applied", "")
    assert eventually(lambda: balloon.current_pages == 112 * MB)


def test_memory_target_not_taken_is_pending(host: Host, db: MachineGuest):
    """db's sysfs tree is a copy no balloon driver reads: the target is never taken."""
    result = host.set_memory_target("db", 100 * 1024, wait=0.3)
    assert (result.status, result.guest_target_kib) == ("pending", 131072)


def test_counters_are_published(host: Host, web: MachineGuest):
    g = web.guest
    g.swapon(1024)
    for pid in g.alloc_anon(8):
        g.swap_out(pid)
    assert eventually(lambda: host.tmem_report(web.domid).stats["frontswap_succ_stores"] == 8)
    stats = host.tmem_report(web.domid).stats
    assert set(stats) >= {"frontswap_loads", "cleancache_puts"}


def test_reconcile_directly_on_an_in_process_connection(server: XenStoreServer, dom0):
    """The agent on ``LocalXenStore`` (the emulator's in-process route) against a bare model
    guest without a tmem backend: the module toggles cannot apply there."""
    server.introduce_domain(7, "bare", 65536, 65536)
    guest = Guest("bare", memory_mb=64)
    dom0.write("/local/domain/7/control/tmem/cleancache", "0")
    dom0.write("/local/domain/7/control/selfballoon/interval", "3")
    dom0.write("/local/domain/7/control/tmem/seq", "5")
    agent = Agent(server.connect(7), ModelSink(guest))
    report = agent.reconcile()
    assert report.seq == 5 and report.state == "refused"
    assert report.refused == {"cleancache": "the tmem module is not loaded"}
    assert guest.selfballoon.knobs.interval == 3
    assert dom0.read("/local/domain/7/data/tmem/refused/cleancache") == (
        b"the tmem module is not loaded")
    dom0.write("/local/domain/7/control/tmem/cleancache", "")  # withdrawn: junk is refused too
    assert agent.reconcile().state == "refused"
    dom0.rm("/local/domain/7/control/tmem/cleancache")
    report = agent.reconcile()
    assert report.state == "applied" and report.reason == ""
    assert not dom0.exists("/local/domain/7/data/tmem/refused/cleancache")


def test_agent_survives_a_failing_step(server: XenStoreServer, dom0: XenStoreClient, caplog):
    """A sink that raises an unexpected error on its first reads (a fake standing in for a bug
    anywhere in a step): the agent logs it and keeps serving."""

    class Flaky(ModelSink):
        fails = 3

        def read(self, path: str) -> str | None:
            if self.fails:
                self.fails -= 1
                raise RuntimeError("boom")
            return super().read(path)

    server.introduce_domain(8, "flaky", 65536, 65536)
    guest = Guest("flaky", memory_mb=64)
    dom0.write("/local/domain/8/control/selfballoon/interval", "3")
    dom0.write("/local/domain/8/control/tmem/seq", "1")
    agent = Agent(server.connect(8), Flaky(guest), stats_interval=0.1, max_backoff=0.05)
    with agent:
        assert eventually(lambda: dom0.read("/local/domain/8/data/tmem/seq", None) == b"1")
    assert guest.selfballoon.knobs.interval == 3
    assert "boom" in caplog.text


def test_sysfs_write_errors_and_missing_files_are_refused(server: XenStoreServer, dom0,
                                                          tmp_path):
    """A kernel refusal arrives as OSError from write(2): here from a real read-only kernel
    attribute (``/proc/sys/kernel/ngroups_max``, mode 0444, refused even to root) linked in
    where ``selfballoon_interval`` belongs. A kernel without self-ballooning has no
    ``selfballoon/`` directory at all."""
    import shutil as sh

    server.introduce_domain(9, "odd", 65536, 65536)
    root = SysfsView(Guest("odd", memory_mb=64)).mirror(tmp_path / "root")
    interval = root / SB / "selfballoon_interval"
    interval.unlink()
    interval.symlink_to("/proc/sys/kernel/ngroups_max")
    dom0.write("/local/domain/9/control/selfballoon/interval", "4")
    dom0.write("/local/domain/9/control/selfballoon/uphysteresis", "2")
    agent = Agent(server.connect(9), SysfsSink(root))
    report = agent.reconcile()
    assert report.state == "refused" and list(report.refused) == ["interval"]
    assert "(-EACCES)" in report.refused["interval"]
    assert (root / SB / "selfballoon_uphysteresis").read_text() == "2\n"  # the rest applies
    sh.rmtree(root / SB)
    report = agent.reconcile()
    assert set(report.refused) == {"interval", "uphysteresis"}
    assert "missing (kernel without self-ballooning?)" in report.refused["uphysteresis"]


def test_an_agent_that_stops_publishing_turns_silent(host: Host, web: MachineGuest, dom0):
    """The agent's heartbeat: its clock at every publish, and its interval. dom0 calls an agent
    silent once the heartbeat is more than three intervals (plus slack for skew) behind."""
    assert host.set_toggles("web", {"interval": 11}, timeout=10).status == "applied"
    report = host.tmem_report(web.domid)
    assert report.heartbeat_interval == 1  # 0.2 s, in whole seconds
    assert -2 <= report.heartbeat_age_s <= 5 and not report.silent
    web.agent.stop()
    limit = 3 * report.heartbeat_interval + SILENT_SLACK_S
    for ahead, status in ((0, "applied"), (limit - 5, "applied"), (limit + 10, "silent")):
        later = Host(dom0, clock=lambda ahead=ahead: time.time() + ahead)
        assert later.tmem_report(web.domid).status == status, ahead
    assert later.guest("web").row()["agent"] == "silent"
    # a guest clock ahead of dom0's is skew, not silence
    assert not Host(dom0, clock=lambda: time.time() - 3600).tmem_report(web.domid).silent
