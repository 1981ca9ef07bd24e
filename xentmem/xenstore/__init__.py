"""xenstore for xentmem: our ``XenStore`` protocol, a client that never hangs, and a xenstored.

::

    from xentmem.xenstore import XenStoreClient, transaction

    xs = XenStoreClient()                       # XENSTORED_PATH / XENSTORED_RUNDIR / xenbus
    xs.write("/local/domain/5/memory/target", "524288")
    untrusted_used = xs.read("/local/domain/5/data/used-kib", None)
    used = sanitize_kib(untrusted_used)         # int or None, never raises
    with xs.watch("/local/domain/5/memory/target", timeout=10) as w:
        for event in w:                         # XenStoreTimeout after 10 s of silence
            ...
    transaction(xs, lambda tx: tx.write("a", tx.read("b")))   # retried on EAGAIN

    server = XenStoreServer("/tmp/xs/socket").start()           # the emulator's xenstored
    server.introduce_domain(5, "guest5", memory_kib=524288, max_kib=1048576)
    guest = XenStoreClient(server.domain_socket(5))             # acts as domain 5

Limits: :class:`Quota` bounds what a guest may store, :class:`ConnectionLimits` what its
connections may make the server hold (see :mod:`xentmem.xenstore.server` for the defaults).

Errors are those of :mod:`xentmem.errors`: ``XenStoreNotFound`` (ENOENT), ``XenStorePermission``
(EACCES/EPERM), ``XenStoreTimeout``, ``XenStoreUnavailable``, else ``XenStoreError`` with
``.errno`` (EAGAIN for a conflict, E2BIG for a value too long, ENOSPC for a quota, ...).
"""

from xentmem._lazy import lazy_exports

__all__ = [
    "ConnectionLimits",
    "LocalXenStore",
    "Op",
    "Perm",
    "Quota",
    "Transaction",
    "TreeNode",
    "Watch",
    "WatchEvent",
    "XenStore",
    "XenStoreClient",
    "XenStoreOps",
    "XenStoreServer",
    "escape_value",
    "layout_dom0",
    "layout_domain",
    "ls_lines",
    "resolve_path",
    "sanitize_bool",
    "sanitize_choice",
    "sanitize_domid",
    "sanitize_int",
    "sanitize_kib",
    "sanitize_meminfo",
    "sanitize_text",
    "teardown_domain",
    "transaction",
    "walk",
]

# each name's module is imported on first use: importing a submodule (or this package)
# stays light
__getattr__, __dir__ = lazy_exports(__name__, {
    "._client": (
        "LocalXenStore", "Transaction", "Watch", "WatchEvent", "XenStore", "XenStoreClient",
        "XenStoreOps", "resolve_path", "transaction",
    ),
    "._store": ("Quota",),
    "._wire": ("Op", "Perm"),
    ".sanitize": (
        "escape_value", "sanitize_bool", "sanitize_choice", "sanitize_domid", "sanitize_int",
        "sanitize_kib", "sanitize_meminfo", "sanitize_text",
    ),
    ".server": ("ConnectionLimits", "XenStoreServer"),
    ".toolstack": ("layout_dom0", "layout_domain", "teardown_domain"),
    ".tree": ("TreeNode", "ls_lines", "walk"),
})
