"""cleancache contracts of ref §2 (Linux 3.10-3.12), one test per rule, named after it.

The recording fake backend (``_fakes``) shows which ops the frontend issues; the coherency rules
are also run against the real zcache backend.
"""

from __future__ import annotations

import pytest

from xentmem.abi import PAGE_SIZE
from xentmem.guest import Guest, Zcache
from xentmem.guest.cleancache import (
    FS_NO_BACKEND,
    FS_UNKNOWN,
    MAX_INITIALIZABLE_FS,
    key_from_fh,
)

from ._fakes import RecordingCleancache, page

UUID = bytes(range(16))


def test_mount_before_backend_gets_fake_id_and_pending_slot(guest: Guest):
    fs = guest.mount("root", "ext4")
    assert fs.cleancache_poolid == 1000
    assert guest.cleancache.fs_poolid_map[0] == FS_NO_BACKEND
    shared = guest.mount("cluster", "ocfs2", uuid=UUID)
    assert shared.cleancache_poolid == 2000
    assert guest.cleancache.shared_fs_poolid_map[0] == FS_NO_BACKEND
    assert guest.cleancache.uuids[0] == UUID


def test_register_resolves_pending_slots_private_before_shared_per_index(guest: Guest):
    guest.mount("a", "ext4")
    guest.mount("s", "ocfs2", uuid=UUID)
    guest.mount("b", "btrfs")
    ops = RecordingCleancache()
    assert guest.cleancache.register_ops(ops) is None
    assert ops.calls == [("init_fs", PAGE_SIZE), ("init_shared_fs", UUID, PAGE_SIZE),
                         ("init_fs", PAGE_SIZE)]
    assert guest.cleancache.fs_poolid_map[:2] == [0, 2]
    assert guest.cleancache.shared_fs_poolid_map[0] == 1


def test_register_returns_previous_and_does_not_reinit_mapped_slots(guest: Guest):
    guest.mount("a", "ext4")
    first, second = RecordingCleancache(), RecordingCleancache()
    guest.cleancache.register_ops(first)
    assert guest.cleancache.register_ops(second) is first
    assert second.calls == []


def test_mount_with_backend_creates_real_pool_at_once(guest: Guest):
    ops = RecordingCleancache()
    guest.cleancache.register_ops(ops)
    fs = guest.mount("root", "ext4")
    assert ops.calls == [("init_fs", PAGE_SIZE)]
    assert guest.cleancache.real_pool_id(fs.cleancache_poolid) == 0


def test_only_32_filesystems_get_a_slot(guest: Guest):
    fss = [guest.mount(f"fs{i}", "ext4") for i in range(MAX_INITIALIZABLE_FS + 1)]
    assert fss[-2].cleancache_poolid == 1000 + MAX_INITIALIZABLE_FS - 1
    assert fss[-1].cleancache_poolid == -1  # silently not cached


def test_backend_refusal_is_stored_verbatim_and_disables_that_fs(guest: Guest):
    fs = guest.mount("s", "ocfs2", uuid=UUID)
    guest.cleancache.register_ops(RecordingCleancache(refuse_shared=True))
    assert guest.cleancache.shared_fs_poolid_map[0] == -22
    guest.read_file("s", 1, 0)
    guest.drop_caches()
    assert guest.cleancache.puts == 0  # real < 0: nothing put, nothing counted
    assert fs.cleancache_poolid == 2000


def test_umount_frees_slot_and_invalidates_real_pool(guest: Guest):
    ops = RecordingCleancache()
    guest.cleancache.register_ops(ops)
    fs = guest.mount("root", "ext4")
    guest.umount("root")
    assert ops.calls[-1] == ("invalidate_fs", 0)
    assert guest.cleancache.fs_poolid_map[0] == FS_UNKNOWN
    assert fs.cleancache_poolid == -1


def test_umount_of_non_cleancache_fs_calls_invalidate_fs_with_minus_one(guest: Guest):
    ops = RecordingCleancache()
    guest.cleancache.register_ops(ops)
    guest.mount("tmp", "tmpfs")
    guest.umount("tmp")
    assert ops.calls == [("invalidate_fs", -1)]


def test_umount_of_shared_fs_forgets_uuid(guest: Guest):
    guest.mount("s", "ocfs2", uuid=UUID)
    guest.umount("s")
    assert guest.cleancache.uuids[0] is None
    assert guest.cleancache.shared_fs_poolid_map[0] == FS_UNKNOWN


def test_get_and_put_without_backend_are_counted(guest: Guest):
    """Checklist 2: puts with no backend count in ``puts``; gets in ``failed_gets``."""
    guest.mount("root", "ext4")
    guest.read_file("root", 1, 0)
    guest.drop_caches()
    assert guest.cleancache.debugfs() == {"succ_gets": 0, "failed_gets": 1, "puts": 1,
                                          "invalidates": 0}


def test_get_from_unresolved_real_pool_counts_failed_get(guest: Guest):
    guest.mount("s", "ocfs2", uuid=UUID)
    guest.cleancache.register_ops(RecordingCleancache(refuse_shared=True))
    guest.read_file("s", 1, 0)
    assert guest.cleancache.failed_gets == 1


def test_private_get_is_exclusive(guest: Guest):
    guest.mount("root", "ext4")
    guest.load_backend(Zcache())
    guest.read_file("root", 7, 3)
    guest.drop_caches()
    assert guest.read_file("root", 7, 3) == "cleancache"
    with guest._pc_lock:
        guest._pagecache.clear()  # drop without a put
    assert guest.read_file("root", 7, 3) == "disk"  # the hit removed it


def test_shared_get_is_not_exclusive(guest: Guest):
    fs = guest.mount("s", "ocfs2", uuid=UUID)
    ops = RecordingCleancache()
    guest.cleancache.register_ops(ops)
    key = fs.key(1)
    guest.cleancache.put_page(fs, key, 0, page(1))
    buf = bytearray(PAGE_SIZE)
    assert guest.cleancache.get_page(fs, key, 0, buf) == 0
    assert guest.cleancache.get_page(fs, key, 0, buf) == 0


@pytest.mark.parametrize("backend", ["fake", "zcache"])
def test_put_put_get_never_returns_the_older_put(guest: Guest, backend: str):
    fs = guest.mount("root", "ext4")
    if backend == "fake":
        guest.cleancache.register_ops(RecordingCleancache())
    else:
        guest.load_backend(Zcache())
    key = fs.key(5)
    guest.cleancache.put_page(fs, key, 1, page(0xAA))
    guest.cleancache.put_page(fs, key, 1, page(0xBB))
    buf = bytearray(PAGE_SIZE)
    ret = guest.cleancache.get_page(fs, key, 1, buf)
    assert ret != 0 or bytes(buf) == page(0xBB)


@pytest.mark.parametrize("backend", ["fake", "zcache"])
def test_get_get_coherency_miss_stays_miss_until_put(guest: Guest, backend: str):
    fs = guest.mount("root", "ext4")
    if backend == "fake":
        guest.cleancache.register_ops(RecordingCleancache())
    else:
        guest.load_backend(Zcache())
    key = fs.key(5)
    buf = bytearray(PAGE_SIZE)
    assert guest.cleancache.get_page(fs, key, 1, buf) == -1
    assert guest.cleancache.get_page(fs, key, 1, buf) == -1
    guest.cleancache.put_page(fs, key, 1, page(3))
    assert guest.cleancache.get_page(fs, key, 1, buf) == 0


def test_invalidate_page_counted_only_with_backend_and_real_pool(guest: Guest):
    fs = guest.mount("root", "ext4")
    guest.cleancache.invalidate_page(fs, fs.key(1), 0)
    assert guest.cleancache.invalidates == 0
    guest.cleancache.register_ops(RecordingCleancache())
    guest.write_file("root", 1, 0)
    assert guest.cleancache.invalidates == 1


def test_write_invalidates_so_no_stale_copy_is_returned(guest: Guest):
    guest.mount("root", "ext4")
    guest.load_backend(Zcache())
    guest.read_file("root", 1, 0)
    guest.drop_caches()  # clean page put
    guest.write_file("root", 1, 0)  # new version: cleancache copy invalidated
    with guest._pc_lock:
        guest._pagecache.clear()
    assert guest.read_file("root", 1, 0) == "disk"
    assert guest.stats.stale == 0


def test_invalidate_inode_is_not_counted_and_truncate_drops_the_file(guest: Guest):
    fs = guest.mount("root", "ext4")
    ops = RecordingCleancache()
    guest.cleancache.register_ops(ops)
    for i in range(4):
        guest.read_file("root", 9, i)
    guest.drop_caches()
    guest.truncate("root", 9)
    assert ("invalidate_inode", 0, fs.key(9)) in ops.calls
    assert guest.cleancache.invalidates == 0
    assert [guest.read_file("root", 9, i) for i in range(4)] == ["disk"] * 4
    assert guest.stats.stale == 0


def test_key_is_inode_number_on_ext4_and_file_handle_on_btrfs(guest: Guest):
    ext4 = guest.mount("e", "ext4")
    btrfs = guest.mount("b", "btrfs")
    assert ext4.key(0x1234) == (0x1234, 0, 0)
    assert btrfs.key(0x1234) == key_from_fh((0x1234, 0, 0))
    assert key_from_fh(tuple(range(7))) is None  # longer than 6 words: key error


def test_key_error_skips_get_without_counting(guest: Guest):
    fs = guest.mount("root", "ext4")
    guest.cleancache.register_ops(RecordingCleancache())
    assert guest.cleancache.get_page(fs, None, 0, bytearray(PAGE_SIZE)) == -1
    assert guest.cleancache.failed_gets == 0


def test_unregister_destroys_pools_and_next_backend_recreates_them(guest: Guest):
    guest.mount("root", "ext4")
    guest.mount("s", "ocfs2", uuid=UUID)
    first = RecordingCleancache()
    guest.cleancache.register_ops(first)
    assert guest.cleancache.unregister_ops() == 2
    assert ("invalidate_fs", 0) in first.calls and ("invalidate_fs", 1) in first.calls
    assert guest.cleancache.fs_poolid_map[0] == FS_NO_BACKEND
    second = RecordingCleancache()
    guest.cleancache.register_ops(second)
    assert [c[0] for c in second.calls] == ["init_fs", "init_shared_fs"]


def test_ext4_remount_rw_consumes_a_second_slot_and_leaks_the_first(guest: Guest):
    fs = guest.mount("root", "ext4")
    guest.remount_rw("root")
    assert fs.cleancache_poolid == 1001
    guest.umount("root")
    assert guest.cleancache.fs_poolid_map[0] == FS_NO_BACKEND  # leaked until reboot
    assert guest.cleancache.fs_poolid_map[1] == FS_UNKNOWN


def test_bad_mounts_and_uuids_are_refused_and_change_nothing(guest: Guest):
    from xentmem.errors import GuestError

    fs = guest.mount("root", "ext4")
    with pytest.raises(GuestError):
        guest.mount("root", "ext4")
    with pytest.raises(GuestError):
        guest.mount("x", "ntfs")
    with pytest.raises(GuestError):
        guest.cleancache.init_shared_fs(b"short", fs)
    with pytest.raises(GuestError):
        guest.umount("nope")
    assert fs.cleancache_poolid == 1000 and list(guest.filesystems) == ["root"]


def test_remount_under_the_same_name_starts_with_an_empty_page_cache(guest: Guest):
    guest.mount("data", "ext4")
    guest.read_file("data", 1, 0)
    guest.umount("data")
    guest.mount("data", "ext4")  # a different volume under the same mount point
    assert guest.pagecache_pages == 0
    assert guest.read_file("data", 1, 0) == "disk"
    assert guest.stats.stale == 0
