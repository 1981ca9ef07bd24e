"""Load generator: our xenstored vs the real oxenstored, same load, one run.

``python -m xentmem.xenstore.bench [--seconds 1.5] [--rounds 3] [--clients 1,8] [--json]``

Each server runs in its own process (ours via ``python -m xentmem.xenstore serve``; oxenstored via
vm-images/oxenstored with ``--quiet``: no access log, log level warn, i.e. at its fastest). Each
client is a separate process with a raw socket doing closed-loop requests (send one, wait for the
reply) as dom0: READ of a 64-byte value, or WRITE of a 64-byte value to a key of its own. We
report requests/s over all clients and the p50/p99 latency of single requests, and the ratio of
our throughput to oxenstored's, plus each server's CPU time per request (from /proc: what the
server itself costs, whatever the clients cost). Servers alternate for each case and each keeps
its best of ``--rounds`` rounds. Without root/unshare only our server is measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import _wire
from ._client import _connect
from ._wire import Op
from .testing import Oxenstored, unavailable_reason

VALUE = b"v" * 64


@dataclass
class Result:
    server: str
    op: str
    clients: int
    requests: int
    seconds: float
    rps: float
    p50_us: float
    p99_us: float
    server_cpu_us: float  # server process CPU time (user + system) per request


def _client(path: str, op: str, index: int, start_at: float, seconds: float, out: mp.Queue) -> None:
    try:
        out.put(_closed_loop(path, op, index, start_at, seconds))
    except BaseException as exc:
        out.put(f"client {index}: {exc!r}")
        raise


def _closed_loop(
    path: str, op: str, index: int, start_at: float, seconds: float
) -> tuple[list[int], float]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    _connect(sock, path, 10)  # oxenstored's listen backlog is short: retry on EAGAIN
    if op == "READ":
        request = _wire.pack(Op.READ, 1, 0, b"/bench/key\0")
    else:
        request = _wire.pack(Op.WRITE, 1, 0, b"/bench/c%d\0" % index + VALUE)
    recv_into = sock.recv_into
    buf = bytearray(65536)
    view = memoryview(buf)
    lat: list[int] = []
    clock = time.perf_counter_ns
    while time.monotonic() < start_at:
        time.sleep(0.001)
    began = time.monotonic()
    stop = began + seconds
    while True:
        t0 = clock()
        sock.sendall(request)
        got = 0
        need = _wire.HEADER_SIZE
        while got < need:
            n = recv_into(view[got:])
            if not n:
                raise ConnectionError("server closed the connection")
            got += n
            if got >= _wire.HEADER_SIZE:
                need = _wire.HEADER_SIZE + _wire.HEADER.unpack_from(buf)[3]
        lat.append(clock() - t0)
        if _wire.HEADER.unpack_from(buf)[0] == Op.ERROR:
            raise RuntimeError(f"server error: {bytes(buf[16:got])!r}")
        if len(lat) & 63 == 0 and time.monotonic() >= stop:
            break
    elapsed = time.monotonic() - began
    sock.close()
    return lat, elapsed


def run_load(path: str, op: str, clients: int, seconds: float) -> tuple[list[int], float]:
    """Latencies (ns) of every request by ``clients`` processes, and the longest client run (s)."""
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    start_at = time.monotonic() + 0.3 + 0.02 * clients
    procs = [
        ctx.Process(target=_client, args=(path, op, i, start_at, seconds, out))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    lats: list[int] = []
    elapsed = 0.0
    for _ in procs:
        got = out.get(timeout=seconds + 60)
        if isinstance(got, str):
            raise RuntimeError(got)
        lats.extend(got[0])
        elapsed = max(elapsed, got[1])
    for p in procs:
        p.join(10)
        if p.exitcode != 0:
            raise RuntimeError(f"load client failed (exit {p.exitcode})")
    return lats, elapsed


def _prepare(path: str, clients: int) -> None:
    from ._client import XenStoreClient

    xs = XenStoreClient(path)
    xs.write("/bench/key", VALUE)
    for i in range(clients):
        xs.write(f"/bench/c{i}", VALUE)
    xs.close()


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i] / 1000.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure_once(name: str, path: str, pid: int, op: str, clients: int, seconds: float) -> Result:
    cpu0 = _cpu_seconds(pid)
    lats, secs = run_load(path, op, clients, seconds)
    cpu = _cpu_seconds(pid) - cpu0
    lats.sort()
    return Result(name, op, clients, len(lats), secs, len(lats) / secs,
                  _percentile(lats, 0.50), _percentile(lats, 0.99),
                  1e6 * cpu / max(1, len(lats)))  # fmt: skip


class _OurServer:
    def __init__(self, work: Path) -> None:
        self.path = str(work / "ours.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xentmem.xenstore", "serve", self.path],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("our xenstored did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run(
    seconds: float, concurrency: list[int], ops: list[str], with_oxenstored: bool, rounds: int = 3
) -> dict:
    """Measure every (op, clients) case on each server, alternating servers ``rounds`` times
    and keeping each server's best round, so that load from elsewhere on the machine hurts
    both alike."""
    work = Path(tempfile.mkdtemp(prefix="xs-bench-", dir="/tmp"))
    servers: dict[str, tuple[str, int]] = {}
    note = None
    ours = _OurServer(work)
    ox: Oxenstored | None = None
    try:
        servers["ours"] = (ours.path, ours.proc.pid)
        if with_oxenstored:
            reason = unavailable_reason()
            if reason:
                note = f"oxenstored not measured: {reason}"
            else:
                ox = Oxenstored(work / "oxs", quiet=True).start()
                assert ox.pid is not None
                servers["oxenstored"] = (ox.socket_path, ox.pid)
        for path, _pid in servers.values():
            _prepare(path, max(concurrency))
        best: dict[tuple[str, str, int], Result] = {}
        for op in ops:
            for n in concurrency:
                for _ in range(rounds):
                    for name, (path, pid) in servers.items():
                        r = measure_once(name, path, pid, op, n, seconds)
                        key = (name, op, n)
                        if key not in best or r.rps > best[key].rps:
                            best[key] = r
    finally:
        ours.stop()
        if ox is not None:
            ox.stop()
    results = sorted(best.values(), key=lambda r: (r.server != "ours", r.op, r.clients))
    ratios = {
        f"{op} x{n}": best[("ours", op, n)].rps / best[("oxenstored", op, n)].rps
        for (name, op, n) in best
        if name == "ours" and ("oxenstored", op, n) in best
    }
    return {
        "results": [asdict(r) for r in results],
        "ratio_ours_over_oxenstored": ratios,
        "rounds": rounds,
        "note": note,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xentmem.xenstore.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=1.5, help="per round (default 1.5)")
    parser.add_argument("--rounds", type=int, default=3, help="best of N rounds (default 3)")
    parser.add_argument("--clients", default="1,8", help="concurrency levels (default 1,8)")
    parser.add_argument("--ops", default="READ,WRITE")
    parser.add_argument("--no-oxenstored", action="store_true", help="measure our server only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.clients.split(",")]
    ops = [o.strip().upper() for o in args.ops.split(",")]
    if not set(ops) <= {"READ", "WRITE"} or any(c < 1 for c in concurrency):
        parser.error("ops are READ and/or WRITE; clients >= 1")
    report = run(args.seconds, concurrency, ops, not args.no_oxenstored, max(1, args.rounds))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{'server':<11} {'op':<6} {'clients':>7} {'req/s':>10} {'p50 us':>8} {'p99 us':>8} "
        f"{'cpu us/req':>10}"
    )
    for r in report["results"]:
        print(
            f"{r['server']:<11} {r['op']:<6} {r['clients']:>7} {r['rps']:>10.0f} "
            f"{r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {r['server_cpu_us']:>10.1f}"
        )
    for case, ratio in report["ratio_ours_over_oxenstored"].items():
        print(f"ratio ours/oxenstored {case}: {ratio:.2f}x")
    if report["note"]:
        print(report["note"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
