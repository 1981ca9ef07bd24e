"""User-space self-ballooning for real: dom0's kernel (Debian's 6.1) has no self-balloon driver,
so the agent runs the law itself against dom0's real balloon driver; ``xl list`` sees dom0
shrink toward Committed_AS plus the reserve, and come back when self-ballooning is switched
off. The figures (how far, how fast, the agent's CPU per run) go to the runner's output."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ._xen import wait_until, xl_list

DOM0 = "Domain-0"
SHRINK_TIMEOUT = 120.0  # several law runs (1 s apart) plus balloon steps, under TCG
HOME = "/local/domain/0"


def _dom0_mib() -> int:
    return xl_list()[DOM0]["mem"]


def test_dom0_self_balloons_in_user_space(xs, out_dir: Path) -> None:
    from xentmem.agent import Agent, SysfsSink
    from xentmem.xenstore import XenStoreClient

    before = _dom0_mib()
    original_target = xs.read(f"{HOME}/memory/target", None)
    agent_xs = XenStoreClient(timeout=10.0)
    agent = Agent(agent_xs, SysfsSink("/"), stats_interval=1.0)
    law, spent = agent.selfballoon, []
    run = law.run

    def timed(limits):  # type: ignore[no-untyped-def]
        cpu = time.thread_time()  # the agent's thread: one run of the law, its reads and write
        try:
            return run(limits)
        finally:
            spent.append(time.thread_time() - cpu)

    law.run = timed  # type: ignore[method-assign]
    started = time.monotonic()
    try:
        agent.start(wait=30)
        assert agent.mode() == "user-space", agent.report
        for name, value in (("interval", 1), ("downhysteresis", 1)):
            xs.write(f"{HOME}/control/selfballoon/{name}", str(value))
        xs.write(f"{HOME}/control/tmem/selfballooning", "1")
        xs.write(f"{HOME}/control/tmem/seq", "1")
        wait_until(lambda: xs.read(f"{HOME}/data/tmem/seq", None) == b"1", 30,
                   "the agent to answer the request")
        assert xs.read(f"{HOME}/data/tmem/state") == b"applied", agent.report
        assert xs.read(f"{HOME}/data/tmem/mode") == b"user-space"
        wait_until(lambda: _dom0_mib() < before - 16, SHRINK_TIMEOUT,
                   f"dom0 to shrink below {before - 16} MiB")
        shrunk_at = time.monotonic() - started
        time.sleep(5)  # let it settle toward its goal
        low = _dom0_mib()
        steps = list(agent.selfballoon.steps)
        xs.write(f"{HOME}/control/tmem/selfballooning", "0")
        xs.write(f"{HOME}/control/tmem/seq", "2")
        wait_until(lambda: _dom0_mib() >= before - 4, SHRINK_TIMEOUT,
                   f"dom0 to grow back to about {before} MiB")
        (out_dir / "selfballoon-userspace.json").write_text(json.dumps({
            "dom0_mib_before": before, "dom0_mib_low": low, "shrunk_mib": before - low,
            "seconds_to_shrink_16_mib": round(shrunk_at, 1), "law_runs": len(steps),
            "agent_cpu_ms_per_run": round(1000 * sum(spent) / max(1, len(spent)), 2),
            "last_target_kib": steps[-1].target_pages * 4 if steps else None,
        }, indent=1))
    finally:
        agent.request_stop()
        agent_xs.close()
        agent.stop()
        for node in ("control/tmem/selfballooning", "control/selfballoon/interval",
                     "control/selfballoon/downhysteresis", "control/tmem/seq"):
            xs.rm(f"{HOME}/{node}")
        if original_target is not None:
            xs.write(f"{HOME}/memory/target", original_target)
