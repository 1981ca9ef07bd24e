"""The host memory manager (``xentmem balance``): every guest's memory target decided from
dom0, each decision with its reason.

Inputs are gathered at the rim (:mod:`xentmem.balance.collect`: agents' reports in xenstore,
libvirt memory stats, the host's free memory and tmem); policies are pure functions of them
(:mod:`xentmem.balance.policies`); the :class:`Manager` runs rounds, acts through the host
facade and tracks guests that do not follow. ``xentmem.balance.compare`` (imported on demand: it
builds emulated machines) scores the policies on a living emulated host.
"""

from xentmem.balance.model import (
    Config,
    Decision,
    GuestState,
    HostState,
    Plan,
    Settings,
    TmemAction,
    TmemClient,
)
from xentmem.balance.policies import POLICIES, Policy, fit, plan

__all__ = [
    "POLICIES",
    "Config",
    "Decision",
    "GuestState",
    "HostState",
    "Plan",
    "Policy",
    "Settings",
    "TmemAction",
    "TmemClient",
    "fit",
    "plan",
]
