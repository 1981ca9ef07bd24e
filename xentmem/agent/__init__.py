"""The guest agent: dom0's requests in ``control/`` -> the guest's knobs -> reports in ``data/``.

Runs inside a guest (``xentmem agent run`` or ``python -m xentmem.agent``, over xenbus) or beside
the emulator (as domain N on our xenstored's ``domain_socket(N)``, or in-process)::

    agent = Agent(XenStoreClient(), SysfsSink("/")).start()      # a real guest
    agent = Agent(server.connect(5), ModelSink(guest)).start()   # an emulated guest

Key layout (relative to ``/local/domain/<domid>``; :mod:`xentmem.xenstore.keys` is the one source)

=============================================  =====  =========================================
node                                           who    meaning
=============================================  =====  =========================================
``control/tmem/seq``                           dom0   request number, bumped with each request
``control/tmem/frontswap``                     dom0   0/1: tmem module parameter ``frontswap``
``control/tmem/cleancache``                    dom0   0/1: tmem module parameter ``cleancache``
``control/tmem/selfballooning``                dom0   0/1: ``selfballoon/selfballooning``
``control/tmem/selfshrinking``                 dom0   0/1: ``selfballoon/frontswap_selfshrinking``
``control/selfballoon/interval``               dom0   s, 1..3600: ``selfballoon_interval``
``control/selfballoon/downhysteresis``         dom0   1..10000: ``selfballoon_downhysteresis``
``control/selfballoon/uphysteresis``           dom0   1..10000: ``selfballoon_uphysteresis``
``control/selfballoon/min_usable_mb``          dom0   MiB: ``selfballoon_min_usable_mb``
``control/selfballoon/reserved_mb``            dom0   MiB: ``selfballoon_reserved_mb``
``control/selfballoon/frontswap_hysteresis``   dom0   1..10000: ``frontswap_hysteresis``
``control/selfballoon/frontswap_inertia``      dom0   runs, 1..10000: ``frontswap_inertia``
``data/tmem/seq``                              guest  the ``control/tmem/seq`` answered (last)
``data/tmem/state``                            guest  ``applied`` or ``refused``
``data/tmem/reason``                           guest  one line, empty when applied
``data/tmem/refused/<key>``                    guest  why ``<key>`` was refused
``data/tmem/<toggle>``                         guest  the value the guest now has (0/1)
``data/tmem/selfballoon/<knob>``               guest  the value the guest now has
``data/tmem/stats/frontswap_<counter>``        guest  debugfs frontswap counters
``data/tmem/stats/cleancache_<counter>``       guest  debugfs cleancache counters
``data/tmem/balloon/current_kib``              guest  balloon driver's current reservation
``data/tmem/balloon/target_kib``               guest  balloon driver's target
``data/tmem/meminfo/<field>``                  guest  /proc/meminfo (Committed_AS, MemFree, ...)
``data/tmem/vmstat/<counter>``                 guest  /proc/vmstat pswpin, pswpout (pages)
``data/tmem/sink``                             guest  ``sysfs`` or ``model``
``data/tmem/mode``                             guest  who runs the self-balloon law: ``kernel``
                                                      or ``user-space`` (this agent)
=============================================  =====  =========================================

The agent watches ``control`` (reconciling every requested setting on each change) and
``memory/target`` (only to republish ``data/tmem/balloon`` soon after the balloon driver
acts; the driver itself follows the target). A value outside its range, or one the kernel
refuses (frontswap/cleancache are read-only module parameters on a real kernel; numeric knobs
reject 0), is reported as ``refused`` and changes nothing. The emulated guest can reload its
tmem backend, so there the module toggles apply. The host reads ``data/`` through the
sanitiser only (``xentmem.host.guests``).

Where the kernel has no self-balloon driver (Linux 5.3+), the agent runs the self-balloon law
itself (:mod:`.userspace`): ``selfballooning`` and its knobs are kept by the agent, which moves
the balloon driver's ``target_kb`` every ``interval`` s and gives it back to dom0's
``memory/target`` when switched off or stopped; ``selfshrinking`` and the two ``frontswap_``
knobs are refused (no tmem).

Inside a guest with nothing but Python: ``xentmem agent build-zipapp OUT.pyz`` (:mod:`.pyz`)
makes a single-file agent, ``python3 OUT.pyz --print-unit`` its systemd unit (:mod:`.service`).
"""

from xentmem._lazy import lazy_exports

__all__ = [
    "DATA_MODE",
    "KEYS",
    "KNOBS",
    "MODES",
    "SYSFS_PATHS",
    "TOGGLES",
    "Agent",
    "Key",
    "Limits",
    "ModelSink",
    "Report",
    "Sink",
    "Step",
    "SysfsSink",
    "UserSpaceSelfBalloon",
    "XenStoreTargetSource",
]

# each name's module is imported on first use: importing a submodule (or this package)
# stays light
__getattr__, __dir__ = lazy_exports(__name__, {
    "xentmem.xenstore.keys": ("DATA_MODE", "KEYS", "KNOBS", "MODES", "TOGGLES", "Key"),
    ".agent": ("SYSFS_PATHS", "Agent", "Report"),
    ".sinks": ("ModelSink", "Sink", "SysfsSink"),
    ".target": ("XenStoreTargetSource",),
    ".userspace": ("Limits", "Step", "UserSpaceSelfBalloon"),
})
