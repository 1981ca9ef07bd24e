"""Properties of every policy's plan, on random hosts and guests: no target below its floor or
above its ceiling or maximum, and the managed guests together never hold more than the host
has (or, when the floors alone do not fit, nobody grows)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xentmem.balance import POLICIES, Config, GuestState, HostState, Settings, plan

MiB = 1024

mib = st.integers(16, 4096)


@st.composite
def guests(draw) -> GuestState:
    memory = draw(mib)
    top = draw(st.integers(memory, 8192))
    floor = draw(st.none() | st.integers(1, 2048))
    ceiling = draw(st.none() | st.integers(1, 8192))
    used = draw(st.none() | st.integers(0, 8192))
    return GuestState(
        domid=0, name="", memory_kib=memory * MiB,
        target_kib=draw(st.integers(16, top)) * MiB, max_kib=top * MiB,
        used_kib=None if used is None else used * MiB,
        committed_kib=draw(st.none() | st.integers(0, 8192).map(lambda m: m * MiB)),
        mem_total_kib=draw(st.none() | st.integers(1, memory).map(lambda m: m * MiB)),
        used_avg_kib=draw(st.none() | st.integers(0, 8192).map(lambda m: m * MiB)),
        swap_in_rate=draw(st.floats(0, 10_000)),
        tmem_enabled=draw(st.booleans()),
        selfballooning=draw(st.booleans()) and draw(st.booleans()),
        settings=Settings(floor_kib=None if floor is None else floor * MiB,
                          ceiling_kib=None if ceiling is None else ceiling * MiB,
                          opt_out=draw(st.booleans()) and draw(st.booleans()),
                          priority=draw(st.integers(1, 100))),
        last_change_kib=draw(st.integers(-1024, 1024)) * MiB,
        last_change_age_s=draw(st.floats(0, 1000)))


hosts = st.builds(HostState, free_kib=st.integers(0, 16384).map(lambda m: m * MiB),
                  total_kib=st.none() | st.integers(1024, 65536).map(lambda m: m * MiB),
                  freeable_kib=st.none() | st.integers(0, 4096).map(lambda m: m * MiB))


@settings(max_examples=200, deadline=None)
@given(host=hosts, gs=st.lists(guests(), min_size=1, max_size=8),
       policy=st.sampled_from(sorted(POLICIES)))
def test_targets_respect_limits_and_the_host(host, gs, policy):
    gs = [GuestState(**{**g.__dict__, "domid": i + 1, "name": f"g{i + 1}"})
          for i, g in enumerate(gs)]
    config = Config()
    p = plan(policy, host, gs, config)
    by_id = {g.domid: g for g in gs}
    managed = [d for d in p.decisions if d.managed]
    floors = 0
    lows: list[tuple[int, int]] = []
    for d in p.decisions:
        g = by_id[d.domid]
        if not d.managed:
            assert d.target_kib == g.target_kib  # left alone: untouched
            continue
        ceiling = min(g.settings.ceiling_kib or g.max_kib, g.max_kib)
        floor = min(g.settings.floor_kib or config.default_floor_kib, ceiling)
        floors += floor
        assert d.target_kib <= ceiling <= g.max_kib
        lows.append((d.target_kib, floor))
    total = sum(d.target_kib for d in managed)
    assert p.budget_kib == host.available_kib - host.reserve_kib + sum(
        by_id[d.domid].memory_kib for d in managed)
    if floors <= p.budget_kib:
        assert total <= p.budget_kib, p
        assert all(target >= floor for target, floor in lows)
    else:  # the floors alone do not fit: nobody grows past what it holds
        assert all(d.target_kib <= by_id[d.domid].memory_kib for d in managed)
