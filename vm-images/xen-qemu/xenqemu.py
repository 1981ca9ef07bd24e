"""A real Xen 4.17 host (Debian PV dom0) under QEMU's software emulation: build and run.

``build`` fetches Debian packages with ``apt-get download``, unpacks them with ``dpkg-deb -x``
into ``cache/`` (nothing is installed on this machine) and assembles ``cache/image/``: the
hypervisor, an uncompressed dom0 kernel, and a busybox dom0 initramfs holding the Xen modules,
the Xen tools with their libraries, and a tiny PV guest (gzip'd kernel + busybox initrd). It
rebuilds only when a package version or the recipe changes.

``run -- COMMAND...`` boots that host, shares the machine's root, the project checkout and a
writable output directory into dom0 over virtio-9p, lets the dom0 ``/init`` start xenstored and
the guests, runs COMMAND as root in a chroot of the machine's root, and exits with COMMAND's
status. Facts and pitfalls: ``ref/xen-in-qemu.md``. Standard library only: it runs before the
project's virtualenv exists and under any python3.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
CACHE = Path(os.environ.get("XEN_QEMU_CACHE", HERE / "cache"))
IMAGE = CACHE / "image"
DEFAULT_OUT = HERE / "out"

# Everything in the images comes from these Debian packages (plus the kernel that the
# linux-image-amd64 metapackage points at). A library the tools need but no package here
# provides fails the build with the package that would provide it.
KERNEL_META = "linux-image-amd64"
PACKAGES = (
    "xen-hypervisor-4.17-amd64", "xen-utils-4.17", "xenstore-utils", "busybox-static",
    "libxenmisc4.17", "libxenstore4", "libxencall1", "libxendevicemodel1", "libxenevtchn1",
    "libxenforeignmemory1", "libxengnttab1", "libxenhypfs1", "libxentoolcore1",
    "libxentoollog1", "libc6", "libgcc-s1", "libyajl2", "zlib1g", "libzstd1", "liblzma5",
    "libuuid1",
)
XEN_TOOLS = ("xl", "xenstored", "xen-init-dom0", "xenconsoled")
# dlopen'ed, so not in any DT_NEEDED (xl needs it for pthread_cancel).
DLOPEN_LIBS = ("libgcc_s.so.1",)
# Two load lists: the Xen devices first, the 9p stack in parallel with xenstored's start.
DOM0_MODULES = {
    "xen": ("xen-privcmd", "xenfs", "xen-evtchn", "xen-gntdev", "xen-gntalloc"),
    "9p": ("virtio_pci", "9pnet_virtio", "9p", "overlay"),
}
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
RECIPE = ("xenqemu.py", "dom0-init", "domu-init")

APT_TIMEOUT = 900
# Xen: serial console, a fixed-size dom0, no boot-time scrubbing (saves ~3 s and 1.4 GB of RSS).
# No `noreboot`: a crash must end QEMU (-no-reboot), not hang it.
XEN_CMDLINE = ("console=com1 com1=115200,8n1 dom0_mem=512M,max:512M loglvl=all "
               "guest_loglvl=all bootscrub=0")
DOM0_CMDLINE = "console=hvc0 earlyprintk=xen rdinit=/init panic=1 quiet"
# The CPU: Westmere (x86-64-v2: SSE4.2, POPCNT, enough for numpy 2.x), not `max`. Under this
# QEMU 7.2 TCG, `max` made dom0 user space compute wrong results: SMAP crashes dom0 in Xen's PV
# bounce-frame path; with `max,-smap,-smep` ld.so assertions and SIGABRTs came at random; with
# `max,-smap,-smep,-avx` Python's ipaddress module failed to parse "169.254.0.0" at start-up.
# Westmere gave identical, correct runs, at about 2x the CPU time (62 s vs 27 s to ready).
# $XEN_QEMU_CPU overrides (for trying other models).
QEMU_CPU = os.environ.get("XEN_QEMU_CPU", "Westmere")
QEMU_BASE = ("-accel", "tcg,thread=multi", "-cpu", QEMU_CPU, "-machine", "pc",
             "-nographic", "-nodefaults", "-no-reboot", "-monitor", "none")
CTL = ".xen-qemu"  # control files inside the output share
EXIT_TIMEOUT = 124
EXIT_INFRA = 125


EXIT_NO_PACKAGES = 75  # EX_TEMPFAIL: the Debian packages could not be fetched


class BuildError(RuntimeError):
    """The image could not be built (package missing, unexpected package content)."""


class PackagesUnavailable(BuildError):
    """apt cannot resolve or fetch the packages (no lists, no mirror): not a recipe bug."""


def say(message: str) -> None:
    print(f"xen-qemu: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- ELF helpers


def _elf_sections(data: bytes) -> list[tuple[str, int, int, int, int]]:
    """(name, type, offset, size, link) of every section of a little-endian ELF64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise BuildError("not an ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQII", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_off, strtab_size = raw[shstrndx][4], raw[shstrndx][5]
    strtab = data[strtab_off:strtab_off + strtab_size]
    out = []
    for name, typ, _flags, _addr, off, size, link, _info in raw:
        end = strtab.index(b"\0", name)
        out.append((strtab[name:end].decode(), typ, off, size, link))
    return out


def elf_needed(path: Path) -> list[str]:
    """The DT_NEEDED sonames of a dynamically linked ELF64 file."""
    data = path.read_bytes()
    sections = _elf_sections(data)
    needed = []
    for _name, typ, off, size, link in sections:
        if typ != 6:  # SHT_DYNAMIC
            continue
        str_off = sections[link][2]
        for i in range(0, size, 16):
            tag, val = struct.unpack_from("<qQ", data, off + i)
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", str_off + val)
                needed.append(data[str_off + val:end].decode())
    return needed


def module_depends(path: Path) -> list[str]:
    """The ``depends=`` list from a kernel module's ``.modinfo`` section."""
    data = path.read_bytes()
    for name, _typ, off, size, _link in _elf_sections(data):
        if name == ".modinfo":
            for entry in data[off:off + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [d for d in entry[8:].decode().split(",") if d]
    return []


def vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside an xz-compressed bzImage (Xen then skips ~4.7 s of
    in-hypervisor decompression at every boot)."""
    start = bzimage.find(b"\xfd7zXZ\x00")
    while start >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
        except lzma.LZMAError:
            elf = b""
        if elf[:4] == b"\x7fELF":
            return elf
        start = bzimage.find(b"\xfd7zXZ\x00", start + 1)
    raise BuildError("no xz-compressed ELF kernel found in the bzImage")


# --------------------------------------------------------------------------- packages


def _apt_show(*packages: str) -> dict[str, dict[str, str]]:
    """Candidate control fields of each package (one apt-cache call: each costs ~1 s)."""
    cmd = ["apt-cache", "show", "--no-all-versions", *packages]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    found: dict[str, dict[str, str]] = {}
    for stanza in proc.stdout.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(" "):
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            found.setdefault(fields["Package"], fields)
    missing = [p for p in packages if p not in found]
    if missing:
        raise PackagesUnavailable(f"apt-cache knows no package {', '.join(missing)} "
                         "(run `apt-get update`, as root, on this Debian 12 machine)")
    return found


def resolve_packages() -> dict[str, tuple[str, str]]:
    """package -> (candidate version, architecture), the kernel resolved through its metapackage."""
    try:
        meta = _apt_show(KERNEL_META)[KERNEL_META]
    except BuildError:
        if os.geteuid() != 0:
            raise
        say("apt lists missing, running apt-get update")
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=APT_TIMEOUT)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise PackagesUnavailable(f"apt-get update failed: {exc}") from None
        meta = _apt_show(KERNEL_META)[KERNEL_META]
    kernel = meta["Depends"].split(",")[0].split()[0]
    shown = _apt_show(kernel, *PACKAGES)
    return {p: (shown[p]["Version"], shown[p]["Architecture"]) for p in (kernel, *PACKAGES)}


def download(packages: dict[str, tuple[str, str]]) -> dict[str, Path]:
    """Fetch each package's .deb into cache/debs (once per version), dropping older versions."""
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    paths = {p: debs / f"{p}_{v.replace(':', '%3a')}_{a}.deb" for p, (v, a) in packages.items()}
    wanted = [f"{p}={packages[p][0]}" for p, path in paths.items() if not path.exists()]
    if wanted:
        say(f"downloading {len(wanted)} Debian packages")
        cmd = ["apt-get", "-q", "download", *wanted]
        if os.geteuid() == 0:  # _apt cannot write into the cache dir; fetch as root there
            cmd[1:1] = ["-o", "APT::Sandbox::User=root"]
        try:
            subprocess.run(cmd, cwd=debs, check=True, timeout=APT_TIMEOUT,
                           stdout=subprocess.DEVNULL)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise PackagesUnavailable(f"apt-get download failed: {exc}") from None
    keep = set(paths.values())
    for old in debs.glob("*.deb"):
        if old not in keep:
            old.unlink()
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise BuildError(f"apt-get download did not produce {missing}")
    return paths


# --------------------------------------------------------------------------- build


def _recipe_digest(packages: dict[str, tuple[str, str]]) -> str:
    h = hashlib.sha256(json.dumps(sorted(packages.items())).encode())
    for name in RECIPE:
        h.update((HERE / name).read_bytes())
    return h.hexdigest()


def _in_root(root: Path, path: Path) -> Path:
    """Follow ``path``'s symlinks the way they resolve inside the unpacked tree ``root``."""
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = Path(os.readlink(path))
        path = root / str(target).lstrip("/") if target.is_absolute() else path.parent / target
    raise BuildError(f"symlink loop at {path}")


def _find_lib(root: Path, soname: str) -> Path:
    for d in LIB_DIRS:
        candidate = _in_root(root, root / d / soname)
        if candidate.exists():
            return candidate
    hint = subprocess.run(["dpkg", "-S", soname], capture_output=True, text=True, timeout=60,
                          check=False).stdout.split(":")[0]
    raise BuildError(f"{soname} is in none of the packages; add {hint or 'its package'} "
                     "to PACKAGES in vm-images/xen-qemu/xenqemu.py")


def _copy_with_libs(root: Path, stage: Path, binaries: list[Path]) -> None:
    """Copy the libraries the binaries need (transitively) into stage/lib/x86_64-linux-gnu."""
    libdir = stage / "lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True, exist_ok=True)
    todo = [lib for b in binaries for lib in elf_needed(b)] + list(DLOPEN_LIBS)
    done: set[str] = set()
    while todo:
        soname = todo.pop()
        if soname in done:
            continue
        done.add(soname)
        src = _find_lib(root, soname)
        shutil.copy2(src, libdir / soname)
        todo.extend(elf_needed(src))
    (stage / "lib64").mkdir(exist_ok=True)
    shutil.copy2(_find_lib(root, "ld-linux-x86-64.so.2"), stage / "lib64/ld-linux-x86-64.so.2")


def _module_order(moddir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko files for ``wanted`` and their dependencies, dependencies first."""
    index = {ko.name[:-3].replace("-", "_"): ko for ko in moddir.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        ko = index.get(name.replace("-", "_"))
        if ko is None:
            raise BuildError(f"kernel module {name} not found under {moddir}")
        if ko in order:
            return
        for dep in module_depends(ko):
            visit(dep)
        order.append(ko)

    for name in wanted:
        visit(name)
    return order


def _busybox_tree(root: Path, stage: Path) -> None:
    busybox = root / "bin/busybox"
    (stage / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, stage / "bin/busybox")
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()
    for applet in applets:
        link = stage / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    for d in ("proc", "sys", "dev", "run", "tmp", "etc", "var"):
        (stage / d).mkdir(exist_ok=True)


def _cpio(stage: Path, target: Path) -> None:
    """An uncompressed newc archive: the dom0 kernel then needs no time to unpack it."""
    files = subprocess.run(["find", "."], cwd=stage, capture_output=True, check=True,
                           timeout=120).stdout
    tmp = target.with_suffix(".tmp")
    with tmp.open("wb") as out:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=stage,
                       input=files, stdout=out, check=True, timeout=300)
    tmp.replace(target)


LOCK_TIMEOUT = 1800.0


@contextlib.contextmanager
def cache_lock(exclusive: bool):
    """Builds take the cache exclusively, runs share it: two test runs on one machine neither
    rebuild under a booting VM nor unpack into the same tree at once. Bounded wait."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("a") as fh:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fh, mode)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError(f"{CACHE} stayed locked for {LOCK_TIMEOUT:.0f} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(force: bool = False) -> Path:
    """Build (or reuse) cache/image under the exclusive cache lock; return its path."""
    with cache_lock(exclusive=True):
        return _build(force)


def _build(force: bool) -> Path:
    packages = resolve_packages()
    digest = _recipe_digest(packages)
    stamp = IMAGE / "stamp"
    outputs = [IMAGE / n for n in ("xen", "dom0-vmlinux", "dom0-initrd.cpio")]
    if not force and stamp.exists() and stamp.read_text() == digest and all(
            p.exists() for p in outputs):
        return IMAGE
    debs = download(packages)
    say("unpacking packages")
    root = CACHE / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in debs.values():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=300)

    shutil.rmtree(IMAGE, ignore_errors=True)
    IMAGE.mkdir(parents=True)
    xen_gz = sorted((root / "boot").glob("xen-4.17*-amd64.gz"))
    if not xen_gz:
        raise BuildError("no /boot/xen-4.17*-amd64.gz in xen-hypervisor-4.17-amd64")
    # QEMU's multiboot loader refuses the gzip'd file; it takes the plain ELF.
    (IMAGE / "xen").write_bytes(gzip.decompress(xen_gz[0].read_bytes()))
    bzimages = sorted((root / "boot").glob("vmlinuz-*"))
    if len(bzimages) != 1:
        raise BuildError(f"expected one kernel in the package, found {bzimages}")
    kver = bzimages[0].name.removeprefix("vmlinuz-")
    vmlinux = vmlinux_from_bzimage(bzimages[0].read_bytes())
    (IMAGE / "dom0-vmlinux").write_bytes(vmlinux)

    say("assembling the dom0 initramfs")
    stage = CACHE / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    _busybox_tree(root, stage)
    # The guest: the same kernel, gzip'd (xl create ~5 s; ~10-12 s from the xz bzImage).
    guest = stage / "guest"
    guest.mkdir()
    (guest / "vmlinuz.gz").write_bytes(gzip.compress(vmlinux, compresslevel=6, mtime=0))
    gstage = CACHE / "guest-stage"
    shutil.rmtree(gstage, ignore_errors=True)
    _busybox_tree(root, gstage)
    shutil.copy2(HERE / "domu-init", gstage / "init")
    _cpio(gstage, guest / "initrd.cpio")
    shutil.rmtree(gstage)

    moddir = root / "lib/modules" / kver
    mods = stage / "lib/modules"
    mods.mkdir(parents=True)
    for group, wanted in DOM0_MODULES.items():
        order = _module_order(moddir, wanted)
        for ko in order:
            shutil.copy2(ko, mods / ko.name)
        (mods / f"{group}.order").write_text("".join(f"{ko.name}\n" for ko in order))

    tools = []
    for name in XEN_TOOLS:
        src = root / "usr/lib/xen-4.17/bin" / name
        dst = stage / "usr/lib/xen-4.17/bin" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        tools.append(src)
    xenstore = root / "usr/bin/xenstore"
    # xenstore-read, -write, -ls ... (the same program; xenstore-control is a wrapper link).
    for src in [xenstore, *sorted((root / "usr/bin").glob("xenstore-*"))]:
        if src.is_symlink():
            continue
        dst = stage / "usr/bin" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        shutil.copy2(src, dst)
    tools.append(xenstore)
    _copy_with_libs(root, stage, tools)
    (stage / "etc/xen").mkdir(parents=True)
    (stage / "etc/xen/xl.conf").write_text("# defaults\n")  # xl warns when it is missing
    shutil.copy2(HERE / "dom0-init", stage / "init")
    (stage / "init").chmod(0o755)
    (stage / "etc/xen-qemu-packages").write_text(
        "".join(f"{p}={v}\n" for p, (v, _a) in sorted(packages.items())))
    _cpio(stage, IMAGE / "dom0-initrd.cpio")
    shutil.rmtree(stage)
    (IMAGE / "packages").write_text(
        "".join(f"{p}={v}\n" for p, (v, _a) in sorted(packages.items())))
    stamp.write_text(digest)
    say(f"image ready in {IMAGE} (kernel {kver})")
    return IMAGE


# --------------------------------------------------------------------------- run


def _peak_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _log_serial(stream, path: Path, start: float) -> None:
    """Copy the serial console to ``path``, each line stamped with seconds since QEMU started
    (the boot timeline is what one needs when a boot is slow or hangs)."""
    with path.open("w", encoding="utf-8", errors="replace") as log:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\r\n")
            log.write(f"[{time.monotonic() - start:7.2f}] {line}\n")
            log.flush()


def _prepare_out(out: Path) -> None:
    """Empty the output directory, refusing to wipe one this tool did not create."""
    marker = out / CTL
    if out.exists() and any(out.iterdir()) and not marker.is_dir():
        raise SystemExit(f"xen-qemu: refusing to clear {out}: not an output directory of "
                         f"this tool (no {CTL}/ in it)")
    shutil.rmtree(out, ignore_errors=True)
    (out / CTL).mkdir(parents=True)


def _command_script(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    base = {
        "HOME": "/tmp", "LANG": "C.UTF-8", "TERM": "dumb", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1",  # no spinning BLAS threads
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "XENTMEM_LIVE": "1", "XEN_QEMU_OUT": "/run/xen-qemu/out",
    }
    base.update(env)
    assigns = " ".join(shlex.quote(f"{k}={v}") for k, v in base.items())
    return (f"cd {shlex.quote(str(cwd))} || exit 125\n"
            f"exec env -i {assigns} {shlex.join(argv)}\n")


def _stop(proc: subprocess.Popen) -> None:
    """End QEMU (and anything in its session), whatever state it is in."""
    if proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run(argv: list[str], *, timeout: float, guests: int, out: Path, memory: int,
        env: dict[str, str], keep_log: bool, quiet: bool) -> int:
    """Boot the host, run ``argv`` in dom0, return its exit status (124 timeout, 125 no boot)."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        say("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
        return EXIT_INFRA
    image = build()
    with cache_lock(exclusive=False):  # no rebuild while this VM uses the image
        return _boot(qemu, image, argv, timeout=timeout, guests=guests, out=out, memory=memory,
                     env=env, keep_log=keep_log, quiet=quiet)


def _boot(qemu: str, image: Path, argv: list[str], *, timeout: float, guests: int, out: Path,
          memory: int, env: dict[str, str], keep_log: bool, quiet: bool) -> int:
    for path in (image, CHECKOUT, out):
        if "," in str(path):
            say(f"QEMU cannot take a path with a comma: {path}")
            return EXIT_INFRA
    _prepare_out(out)
    ctl = out / CTL
    (ctl / "config").write_text(f"checkout={CHECKOUT}\n")
    (ctl / "command").write_text(_command_script(argv, env, Path.cwd()))
    serial = out / "serial.log"
    output = out / "command.log"
    qemu_cmd = [
        qemu, *QEMU_BASE, "-smp", "2", "-m", str(memory),
        "-kernel", str(image / "xen"), "-append", XEN_CMDLINE,
        "-initrd", f"{image / 'dom0-vmlinux'} {DOM0_CMDLINE} xen_qemu.guests={guests},"
                   f"{image / 'dom0-initrd.cpio'}",
        "-serial", "stdio",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
        "-virtfs", f"local,path={CHECKOUT},mount_tag=checkout,security_model=none,"
                   "readonly=on,multidevs=remap",
        "-virtfs", f"local,path={out},mount_tag=xqout,security_model=none,multidevs=remap",
    ]
    say(f"booting Xen under QEMU (timeout {timeout:.0f} s)")
    start = time.monotonic()
    ready_at = None
    peak = 0
    shown = 0
    status = None

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, on_signal)
    proc = subprocess.Popen(qemu_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    logger = threading.Thread(target=_log_serial, args=(proc.stdout, serial, start), daemon=True)
    logger.start()
    try:
        while True:
            try:
                proc.wait(timeout=0.2)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            peak = max(peak, _peak_rss_kib(proc.pid))
            if ready_at is None and (ctl / "ready").exists():
                ready_at = time.monotonic() - start
                say(f"dom0 ready after {ready_at:.1f} s, running: {shlex.join(argv)}")
            if not quiet and output.exists():
                with output.open("rb") as fh:
                    fh.seek(shown)
                    chunk = fh.read()
                shown += len(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            if finished:
                break
            if time.monotonic() - start > timeout:
                say(f"hard timeout after {timeout:.0f} s: stopping QEMU")
                status = EXIT_TIMEOUT
                break
    finally:
        _stop(proc)
        signal.signal(signal.SIGTERM, old)
    elapsed = time.monotonic() - start
    logger.join(timeout=5)
    qemu_err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if status is None:
        try:
            status = int((ctl / "status").read_text().strip())
        except (OSError, ValueError):
            status = EXIT_INFRA
            say(f"dom0 never reported a status (QEMU exit {proc.returncode}) {qemu_err.strip()}")
    metrics = {
        "status": status, "boot_to_ready_s": None if ready_at is None else round(ready_at, 2),
        "command_s": None if ready_at is None else round(elapsed - ready_at, 2),
        "total_s": round(elapsed, 2), "qemu_peak_rss_mib": round(peak / 1024),
        "qemu_exit": proc.returncode,
    }
    (out / "xen-qemu.json").write_text(json.dumps(metrics, indent=2) + "\n")
    say("boot-to-ready {boot_to_ready_s} s, command {command_s} s, total {total_s} s, "
        "QEMU peak RSS {qemu_peak_rss_mib} MiB, exit {status}".format(**metrics))
    if status != 0 or keep_log:
        say(f"serial log kept: {serial}")
        if status in (EXIT_TIMEOUT, EXIT_INFRA) and serial.exists():
            tail = serial.read_text(errors="replace").splitlines()[-40:]
            print("\n".join(tail), file=sys.stderr)
    else:
        serial.unlink(missing_ok=True)
    return status


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xen-qemu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="fetch packages and assemble cache/image (cached)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    r = sub.add_parser("run", help="boot Xen, run COMMAND in dom0, power off")
    r.add_argument("--timeout", type=float, default=600, help="hard limit in seconds (600)")
    r.add_argument("--guests", type=int, default=1, choices=range(3),
                   help="PV guests to create before COMMAND (1)")
    r.add_argument("--memory", type=int, default=2048, help="QEMU RAM in MiB (2048)")
    r.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output directory, shared writable into dom0 ({DEFAULT_OUT})")
    r.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="extra environment for COMMAND")
    r.add_argument("--keep-log", action="store_true", help="keep serial.log on success too")
    r.add_argument("--quiet", action="store_true", help="do not stream COMMAND's output")
    r.add_argument("command", nargs="+", help="command to run in dom0 (after --)")
    ns = parser.parse_args(args)
    try:
        if ns.action == "build":
            build(force=ns.force)
            return 0
        env = {}
        for item in ns.env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"--env wants K=V, got {item!r}")
            env[key] = value
        return run(ns.command, timeout=ns.timeout, guests=ns.guests, out=ns.out.resolve(),
                   memory=ns.memory, env=env, keep_log=ns.keep_log, quiet=ns.quiet)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: QEMU is already stopped
        say(f"interrupted ({exc or 'Ctrl-C'}); QEMU stopped, outputs so far in {ns.out}")
        return 130
    except PackagesUnavailable as exc:
        say(f"build failed: {exc}")
        return EXIT_NO_PACKAGES
    except (BuildError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        say(f"build failed: {exc}")
        return EXIT_INFRA


if __name__ == "__main__":
    sys.exit(main())
