"""``python -m xentmem.xenstore serve SOCKET [--domain DOMID:NAME:MEM_KIB:MAX_KIB ...]``

Run the emulator's xenstored on its own (for tests, benchmarks and manual poking with the C
tools: ``XENSTORED_PATH=SOCKET xenstore-ls``) until SIGTERM or SIGINT. Prints ``ready`` once the
socket accepts connections.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .server import XenStoreServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xentmem.xenstore")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a xenstored on a unix socket")
    serve.add_argument("socket")
    serve.add_argument(
        "--domain", action="append", default=[], metavar="DOMID:NAME:MEM_KIB:MAX_KIB"
    )
    args = parser.parse_args(argv)

    server = XenStoreServer(args.socket).start()
    try:
        for spec in args.domain:
            domid, name, mem, top = spec.split(":")
            server.introduce_domain(int(domid), name, int(mem), int(top))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        print("ready", flush=True)
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
