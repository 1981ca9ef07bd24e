"""The sysfs/debugfs view: file names, units, defaults and the kernel's parsing rules."""

from __future__ import annotations

import pytest

from xentmem.errors import GuestError
from xentmem.guest import Guest, SysfsView, Zcache
from xentmem.guest.selfballoon import MB
from xentmem.guest.sysfs import BALLOON_DIR, c_strtoull, memparse

SB = f"{BALLOON_DIR}/selfballoon"


@pytest.fixture
def view() -> SysfsView:
    return SysfsView(Guest("s", memory_mb=128, max_memory_mb=256))


def test_tree_has_the_kernel_file_names(view: SysfsView):
    assert view.listdir(BALLOON_DIR) == ["info", "max_retry_count", "max_schedule_delay",
                                         "retry_count", "schedule_delay", "selfballoon",
                                         "target", "target_kb"]
    assert view.listdir(f"{BALLOON_DIR}/info") == ["current_kb", "high_kb", "low_kb"]
    assert view.listdir(SB) == sorted([
        "selfballooning", "selfballoon_interval", "selfballoon_downhysteresis",
        "selfballoon_uphysteresis", "selfballoon_min_usable_mb", "selfballoon_reserved_mb",
        "frontswap_selfshrinking", "frontswap_hysteresis", "frontswap_inertia"])
    assert view.listdir("sys/kernel/debug/frontswap") == ["failed_stores", "invalidates",
                                                          "loads", "succ_stores"]
    assert view.listdir("sys/kernel/debug/cleancache") == ["failed_gets", "invalidates",
                                                           "puts", "succ_gets"]


def test_units_and_defaults(view: SysfsView):
    assert view.read(f"{BALLOON_DIR}/target_kb") == f"{128 * 1024}\n"
    assert view.read(f"{BALLOON_DIR}/target") == f"{128 << 20}\n"  # bytes, not pages
    assert view.read(f"{BALLOON_DIR}/info/current_kb") == f"{128 * 1024}\n"
    assert view.read(f"{BALLOON_DIR}/max_schedule_delay") == "32\n"
    assert view.read(f"{SB}/selfballoon_interval") == "5\n"
    assert view.read(f"{SB}/selfballoon_downhysteresis") == "8\n"
    assert view.read(f"{SB}/frontswap_hysteresis") == "20\n"
    assert view.read(f"{SB}/frontswap_inertia") == "3\n"
    assert view.read(f"{SB}/selfballooning") == "0\n"  # until the tmem module loads


def test_target_kb_parses_base_auto_and_garbage_as_zero(view: SysfsView):
    view.write(f"{BALLOON_DIR}/target_kb", "0x18000\n")  # 96 MiB in KiB
    assert view.guest.balloon.stats.target_pages == 96 * MB
    assert c_strtoull("garbage") == (0, "garbage")
    assert c_strtoull("017") == (15, "")


def test_target_takes_bytes_with_suffix(view: SysfsView):
    view.write(f"{BALLOON_DIR}/target", "100M")
    assert view.guest.balloon.stats.target_pages == 100 * MB
    assert memparse("1G") == 1 << 30 and memparse("4k") == 4096


@pytest.mark.parametrize("text", ["0", "abc", "-1", "5x", " 5", str(1 << 32)])
def test_numeric_knob_rejects_zero_and_garbage_and_changes_nothing(view: SysfsView, text):
    with pytest.raises(GuestError, match="EINVAL"):
        view.write(f"{SB}/selfballoon_interval", text)
    assert view.read(f"{SB}/selfballoon_interval") == "5\n"


def test_numeric_knob_accepts_trailing_newline_and_plus(view: SysfsView):
    view.write(f"{SB}/selfballoon_interval", "7\n")
    view.write(f"{SB}/selfballoon_reserved_mb", "+12")
    assert view.guest.selfballoon.knobs.interval == 7
    assert view.guest.selfballoon.knobs.reserved_mb == 12


def test_boolean_knob_accepts_only_0_or_1(view: SysfsView):
    with pytest.raises(GuestError):
        view.write(f"{SB}/selfballooning", "2")
    view.write(f"{SB}/selfballooning", "1")
    assert view.guest.selfballoon.scheduled  # 0->1 arms the worker


def test_numeric_knob_is_stored_as_unsigned_int(view: SysfsView):
    view.write(f"{SB}/selfballoon_reserved_mb", str((1 << 32) + 3))
    assert view.read(f"{SB}/selfballoon_reserved_mb") == "3\n"
    view.write(f"{SB}/selfballoon_reserved_mb", str(0xFFFFFFFF))
    assert view.read(f"{SB}/selfballoon_reserved_mb") == "-1\n"  # shown with %d


def test_writing_inertia_resets_the_countdown(view: SysfsView):
    view.write(f"{SB}/frontswap_inertia", "6")
    assert view.guest.selfballoon.shrink_state.counter == 6


def test_read_only_files_refuse_writes(view: SysfsView):
    with pytest.raises(GuestError, match="read-only"):
        view.write(f"{BALLOON_DIR}/retry_count", "3")
    with pytest.raises(GuestError, match="ENOENT"):
        view.read("sys/nope")


def test_counters_and_module_parameters_appear(view: SysfsView):
    g = view.guest
    g.swapon(64)
    g.load_backend(Zcache())
    (pid,) = g.alloc_anon(1)
    g.swap_out(pid)
    assert view.read("sys/kernel/debug/frontswap/succ_stores") == "1\n"
    assert "Committed_AS:" in view.read("proc/meminfo")


def test_tmem_module_parameters_are_y_or_n(emulated_tmem_factory):
    g = Guest("t", memory_mb=64)
    module = emulated_tmem_factory()
    g.load_backend(module)
    view = SysfsView(g)
    assert view.read("sys/module/tmem/parameters/frontswap") == "Y\n"
    assert view.read("sys/module/tmem/parameters/selfballooning") == "N\n"


def test_mirror_and_apply_round_trip(view: SysfsView, tmp_path):
    root = view.mirror(tmp_path)
    assert (root / BALLOON_DIR / "target_kb").read_text() == f"{128 * 1024}\n"
    (root / SB / "selfballoon_downhysteresis").write_text("4\n")
    (root / BALLOON_DIR / "target_kb").write_text(f"{100 * 1024}\n")
    applied = view.apply(root)
    assert applied == [f"{SB}/selfballoon_downhysteresis", f"{BALLOON_DIR}/target_kb"]
    assert view.guest.selfballoon.knobs.downhysteresis == 4
    assert view.guest.balloon.stats.target_pages == 100 * MB
