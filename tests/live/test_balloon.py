"""Ballooning for real: a ``memory/target`` written through our xenstore client is followed by
the PV guest's balloon driver, as ``xl list`` shows within a bounded time."""

from __future__ import annotations

from ._xen import GUEST, wait_until, xl_list

FOLLOW_TIMEOUT = 90.0  # guest kernel boot (if not done yet) + balloon steps, under TCG


def _mem_mib() -> int:
    return xl_list()[GUEST]["mem"]


def test_guest_follows_memory_target(xs, guest_domid: int) -> None:
    target = f"/local/domain/{guest_domid}/memory/target"
    original = int(xs.read(target))
    assert original == 128 * 1024
    try:
        xs.write(target, str(96 * 1024))
        wait_until(lambda: _mem_mib() == 96, FOLLOW_TIMEOUT, "xl list to show 96 MiB")
    finally:
        xs.write(target, str(original))
    wait_until(lambda: _mem_mib() == 128, FOLLOW_TIMEOUT, "xl list to show 128 MiB again")
