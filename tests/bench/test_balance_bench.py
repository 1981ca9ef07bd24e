"""The host memory manager's CPU per round at 50 guests (``-m bench``)::

    .venv/bin/python -m pytest tests/bench/test_balance_bench.py -m bench -q -s

50 living guests (96 MiB, idle workload) on one emulated host with its xenstored, agents
publishing their reports; the manager's own thread CPU (``time.thread_time``: the xenstored
answering it runs in other threads) for a whole round, for gathering the inputs alone, and for
the policy alone on the gathered state, per policy; wall time per round beside it.
"""

from __future__ import annotations

import time

import pytest

from xentmem.balance import POLICIES, plan
from xentmem.balance.compare import CompareSpec, living_host

pytestmark = pytest.mark.bench

GUESTS = 50
ROUNDS = 10


def _per_round(fn, rounds: int = ROUNDS) -> tuple[float, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.thread_time() - cpu) / rounds, (time.perf_counter() - wall) / rounds


def test_bench_manager_round_at_50_guests():
    spec = CompareSpec(guests=("idle",) * GUESTS, memory_mb=96)
    with living_host(spec) as lh:
        lh.machine.advance(10, tick=1.0)
        lh.publish()
        print(f"\n{GUESTS} guests, {ROUNDS} rounds each; the manager thread's CPU and wall "
              "time per round")
        for policy in POLICIES:
            dry = lh.manager(policy, act=False)
            host, guests = dry.collector.gather()
            cpu, wall = _per_round(dry.round)
            g_cpu, g_wall = _per_round(dry.collector.gather)
            p_cpu, _ = _per_round(lambda p=policy, h=host, gs=guests: plan(p, h, gs), 200)
            print(f"{policy:<8} round {cpu * 1e3:7.1f} ms CPU ({wall * 1e3:7.1f} ms wall)  "
                  f"gather {g_cpu * 1e3:7.1f} ms CPU ({g_wall * 1e3:7.1f} ms wall)  "
                  f"policy {p_cpu * 1e6:8.0f} us CPU")
            assert len(guests) == GUESTS
        acting = lh.manager("tmem")
        first = acting.round()  # sets 50 targets
        lh.settle()
        cpu, wall = _per_round(acting.round)
        print(f"tmem acting: first round {len(first.plan.changes())} changes; then "
              f"{cpu * 1e3:.1f} ms CPU ({wall * 1e3:.1f} ms wall) per round")
        assert len(first.plan.changes()) == GUESTS
