"""What the imitated Xen release does, as one frozen table of switches.

Every version-dependent rule of ``ref/xen-tmem-abi.md`` (§2, §3, §4.2, §7, §9) is one field here,
so the hypervisor code reads ``b.unknown_cmd_enosys`` instead of comparing versions. Fields named
``bug_*`` are the defects a real release showed (§9); ``designed=True`` turns them all off.
"""

from __future__ import annotations

from dataclasses import dataclass

from xentmem.abi import XenVersion

V = XenVersion


@dataclass(frozen=True)
class Behaviour:
    """Switches derived from ``(version, designed)``; see ``for_version``."""

    version: XenVersion
    designed: bool
    # control plane and commands
    control_hypercall: bool        # TMEM_CONTROL (cmd 0) exists (<= 4.5)
    control_privileged: bool       # 4.3+ (XSA-15): TMEM_CONTROL only from a privileged domain
    auth_restore_hypercall: bool   # TMEM_AUTH / TMEM_RESTORE_NEW as cmd 101/102 (<= 4.8)
    sysctl: bool                   # XEN_SYSCTL_tmem_op exists (4.6+)
    sysctl_v48: bool               # 4.8+ subop numbering (client/pool info)
    sysctl_v49: bool               # SET_POOLS / SET_AUTH
    old_page_ops: bool             # NEW_PAGE / READ / WRITE / XCHG (<= 4.3)
    unknown_cmd_enosys: bool       # 4.4+: -ENOSYS, before: 0
    ensure_free_gives_up: bool     # 4.4+: PUT -ENOMEM after 10 failed evictions
    shared_persist_refused: bool   # 4.5+
    auth_always: bool              # 4.9+: shared pools always need authorisation
    auth_dedup: bool               # <= 4.4: authorising a present uuid adds no second copy
    pool_flags_version_bits: bool  # 4.3+: SAVE_GET_POOL_FLAGS carries 1 << 24
    dedup_options: bool            # boot options tmem_dedup / tmem_tze exist (<= 4.7)
    # memory: sizes of tmem's own structures (x86_64 release builds) and Xen's own share
    pgp_bytes: int                 # struct tmem_page_descriptor (dedup fields up to 4.7)
    xen_own_ppm: int                # RAM Xen keeps for itself at boot, in parts per million
    # tmem-list text
    list_cap_key: bool             # `ca` key on C= lines (<= 4.7)
    list_full_t_line: bool         # T= line with perf counters (<= 4.3)
    # defects observed on real releases (§9), off when designed
    bug_get_fault_consumes: bool   # private-ephemeral GET into a bad frame removes the page
    bug_list_remaining_length: bool  # LIST: unchecked C= lines, the length left wraps (§9.4)
    bug_get_pools_min_one: bool    # GET_POOLS writes max(1, len/32) entries (4.8+)
    bug_save_skips_first: bool     # first SAVE_GET_NEXT_PAGE skips a page; cursor survives END
    bug_save_raw_einval: bool      # save/restore of uncompressed pages -> -EINVAL
    bug_live_save: bool            # garbage INV handles, DESTROY_POOL leaks, SAVE_END crash
    bug_garbled_shared_list: bool  # second and later S= records garbled
    bug_creator_not_sharer: bool   # 4.5: creator missing from the share list (and its fallout)
    bug_owner_marks_objects: bool  # PUT marks the object with the pool owner, not the putter
    bug_flush_keeps_marked: bool   # 4.5+: freeing a shared pool destroys only unmarked objects
    bug_quit_pins_pool: bool       # a sharer leaving marks the pool dying: never evicted again
    bug_reassign_clears_owner_slot: bool  # new owner: first on the share list; old slot cleared

    @classmethod
    def for_version(cls, version: XenVersion, *, designed: bool = False) -> Behaviour:
        bug = not designed
        return cls(
            version=version,
            designed=designed,
            control_hypercall=version <= V(4, 5),
            control_privileged=version >= V(4, 3),
            auth_restore_hypercall=version <= V(4, 8),
            sysctl=version >= V(4, 6),
            sysctl_v48=version >= V(4, 8),
            sysctl_v49=version >= V(4, 9),
            old_page_ops=version <= V(4, 3),
            unknown_cmd_enosys=version >= V(4, 4),
            ensure_free_gives_up=version >= V(4, 4),
            shared_persist_refused=version >= V(4, 5),
            auth_always=version >= V(4, 9),
            auth_dedup=version <= V(4, 4),
            pool_flags_version_bits=version >= V(4, 3),
            dedup_options=version <= V(4, 7),
            # list heads 16 + {list head, obj} 24 + size 4 + index 4 + eviction flag, pfp 8,
            # timestamp 8; up to 4.7 also firstbyte and the pcd_siblings list head (§3.7)
            pgp_bytes=88 if version <= V(4, 7) else 72,
            # Xen's frame table, M2P, image and heap: what a 512 MiB host with dom0_mem=256M
            # left to tmem (§9.4: 59,507 ephemeral pages settle on 4.12.4, 59,602 on 4.5.5)
            xen_own_ppm=24788 if version >= V(4, 8) else 22240,
            list_cap_key=version <= V(4, 7),
            list_full_t_line=version <= V(4, 3),
            # The defects were observed on 4.5.5 and 4.12.4 (§9); the save cursor quirk is in
            # the code of every release (§3.10), the share-list ones differ between the two.
            bug_get_fault_consumes=bug and version >= V(4, 5),
            bug_list_remaining_length=bug,  # tmemc_list as written in every release
            bug_get_pools_min_one=bug and version >= V(4, 8),
            bug_save_skips_first=bug,
            bug_save_raw_einval=bug and version >= V(4, 5),
            bug_live_save=bug and version >= V(4, 5),
            bug_garbled_shared_list=bug and version >= V(4, 5),
            bug_creator_not_sharer=bug and version == V(4, 5),
            # do_tmem_put sets last_client from pool->client in every release (§9.3, §9.4)
            bug_owner_marks_objects=bug,
            # pool_flush's pool_destroy_objs(pool, TMEM_CLI_ID_NULL) from 4.5 (4.4 and before
            # destroyed every object): what the last sharer does not own is leaked (§9.4)
            bug_flush_keeps_marked=bug and version >= V(4, 5),
            bug_quit_pins_pool=bug,
            bug_reassign_clears_owner_slot=bug,
        )
