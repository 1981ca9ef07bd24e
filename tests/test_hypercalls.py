"""The hypercall layer without Xen: the privcmd ioctl path (the kernel's ioctl is replaced by a
recorder, since no /dev/xen/privcmd exists here; tests/live runs the real one), errno mapping,
and the typed client's encodings per Xen version (through a recording transport)."""

from __future__ import annotations

import errno

import pytest

from xentmem import abi
from xentmem.abi import Hypercall, TmemCmd, XenVersion, ffi, unpack_sysctl_tmem_op, unpack_tmem_op
from xentmem.errors import (
    TmemEmpty,
    TmemError,
    TmemFrozen,
    TmemNoPoolError,
    TmemNotAvailable,
    TransportError,
    tmem_error,
)
from xentmem.hypercalls import PrivcmdHypervisor, Tmem
from xentmem.hypercalls.privcmd import LockedBuffer


class KernelRecorder:
    """Stands in for the kernel's privcmd ioctl: records each call, answers from a script."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, fd, request, pointer):
        raw = bytes(ffi.buffer(pointer, ffi.sizeof("struct privcmd_hypercall")))
        op, *args = abi.MULTICALL_ENTRY.unpack(raw + bytes(16))[:6]
        struct_bytes = None
        if op == Hypercall.tmem_op and args[0]:  # the hypervisor reads the struct at arg0
            struct_bytes = bytes(ffi.buffer(ffi.cast("char *", args[0]), 56))
        self.calls.append((request, op, args, struct_bytes))
        return self.answers.pop(0)


@pytest.fixture
def device(tmp_path):
    path = tmp_path / "privcmd"
    path.write_bytes(b"")
    return str(path)


def test_ioctl_number_and_struct_handed_to_the_kernel(device):
    kernel = KernelRecorder([(3, 0)])
    with PrivcmdHypervisor(device, ioctl=kernel) as hv:
        assert hv.hypercall(17, 0, 0) == 3
    request, op, args, _ = kernel.calls[0]
    assert request == 0x00305000
    assert (op, args) == (17, [0, 0, 0, 0, 0])


def test_tmem_op_struct_reaches_the_kernel_byte_exact(device):
    kernel = KernelRecorder([(0, 0), (0, 0)])  # probe, then NEW_POOL -> pool 0
    with PrivcmdHypervisor(device, ioctl=kernel, guest="PV") as hv:
        tmem = Tmem(hv, version="4.12")
        assert tmem.new_pool(persistent=True) == 0
    _request, op, args, struct_bytes = kernel.calls[-1]
    assert op == 38 and args[1:] == [0, 0, 0, 0]
    assert struct_bytes == abi.pack_tmem_op(TmemCmd.TMEM_NEW_POOL, flags=0x01000001)


@pytest.mark.parametrize(("err", "cls"), [
    (errno.ENOSYS, TmemNotAvailable), (errno.ENODEV, TmemNoPoolError),
    (abi.EFROZEN, TmemFrozen), (abi.EEMPTY, TmemEmpty), (errno.EINVAL, TmemError),
])
def test_negative_result_surfaces_with_the_same_errno(device, err, cls):
    kernel = KernelRecorder([(-1, err)])
    with PrivcmdHypervisor(device, ioctl=kernel) as hv, pytest.raises(cls) as info:
        hv.hypercall(38, 0)
    assert info.value.errno == err
    assert info.value.op == "tmem_op"


def test_enosys_message_says_tmem_is_absent(device):
    kernel = KernelRecorder([(-1, errno.ENOSYS)])
    with PrivcmdHypervisor(device, ioctl=kernel) as hv:
        tmem = Tmem(hv, version="4.17")
        with pytest.raises(TmemNotAvailable, match=r"TMEM_NEW_POOL.*4\.13"):
            tmem.new_pool(persistent=False)


def test_missing_device_is_a_transport_error(tmp_path):
    with pytest.raises(TransportError, match="not running on Xen"):
        PrivcmdHypervisor(str(tmp_path / "absent"))


def test_locked_buffer_roundtrip_and_bounds():
    buf = LockedBuffer(100)
    try:
        assert buf.address % 4096 == 0
        buf.write(b"hello", 10)
        assert buf.read(5, 10) == b"hello"
        with pytest.raises(ValueError):
            buf.write(b"x" * 2, 99)
    finally:
        buf.close()


def test_error_table():
    exc = tmem_error(-errno.ENOMEM, "tmem_op")
    assert isinstance(exc, MemoryError) and exc.errno == errno.ENOMEM
    assert "ENOMEM" in str(exc) and "-12" in str(exc)
    assert isinstance(tmem_error(-errno.ENODEV, "x"), KeyError)


class RecordingHypervisor:
    """A transport that records hypercalls and answers 0 (a stand-in: these tests check only
    what the client encodes; behaviour is tested against the emulator)."""

    def __init__(self, answer=0):
        self.memory = bytearray(1 << 20)
        self.next = 4096
        self.calls = []
        self.answer = answer

    class _Buf:
        def __init__(self, hv, address, size):
            self.hv, self.address, self.size, self.number = hv, address, size, address >> 12

        def write(self, data, offset=0):
            self.hv.memory[self.address + offset:self.address + offset + len(data)] = data

        def read(self, size=None, offset=0):
            size = self.size if size is None else size
            return bytes(self.hv.memory[self.address + offset:self.address + offset + size])

        def packer(self, layout):
            return lambda *values: self.write(layout.pack(*values))

        def close(self):
            pass

    def alloc_buffer(self, size):
        address, self.next = self.next, self.next + -(-size // 4096) * 4096
        return self._Buf(self, address, size)

    def alloc_frame(self):
        return self.alloc_buffer(4096)

    def hypercall(self, op, *args):
        size = 136 if op == Hypercall.sysctl else 56
        self.calls.append((op, args, bytes(self.memory[args[0]:args[0] + size])))
        return self.answer

    def close(self):
        pass


@pytest.mark.parametrize(("version", "via"), [("4.1", 38), ("4.5", 38), ("4.6", 35),
                                               ("4.12", 35)])
def test_list_is_encoded_for_the_version(version, via):
    hv = RecordingHypervisor()
    Tmem(hv, version).list(3, long=True, buffer_size=8192)
    op, _args, raw = hv.calls[-1]
    assert op == via
    if via == 38:
        f = unpack_tmem_op(raw)
        assert (f.cmd, f.subop, f.cli_id, f.arg1, f.arg2) == (0, 4, 3, 8192, 1)
        assert f.buf != 0
    else:
        s = unpack_sysctl_tmem_op(raw)
        assert s.interface_version == abi.SYSCTL_INTERFACE_VERSION[XenVersion.parse(version)]
        assert (s.tmem_cmd, s.cli_id, s.len, s.arg) == (4, 3, 8192, 1)


@pytest.mark.parametrize(("version", "word"), [("4.5", "arg1"), ("4.7", "len"), ("4.12", "arg")])
def test_flush_argument_moved_in_4_8(version, word):
    hv = RecordingHypervisor(answer=64)
    assert Tmem(hv, version).flush_kib(64) == 64
    raw = hv.calls[-1][2]
    fields = (unpack_tmem_op(raw).__dict__ if word == "arg1"
              else unpack_sysctl_tmem_op(raw).__dict__)
    assert fields[word] == 64


@pytest.mark.parametrize(("version", "cmd"), [("4.8", TmemCmd.TMEM_AUTH), ("4.9", None)])
def test_shared_auth_path(version, cmd):
    hv = RecordingHypervisor(answer=1)
    Tmem(hv, version).shared_auth(5, (0xAA, 0xBB))
    op, _, raw = hv.calls[-1]
    if cmd is not None:
        f = unpack_tmem_op(raw)
        assert (op, f.cmd, f.arg1, f.flags, f.uuid) == (38, cmd, 5, 1, (0xAA, 0xBB))
    else:
        s = unpack_sysctl_tmem_op(raw)
        assert (op, s.tmem_cmd, s.cli_id, s.len) == (35, 11, 5, 32)


@pytest.mark.parametrize("call", [
    lambda t: t.put_page(0, 1, -1, bytes(4096)),
    lambda t: t.put_page(0, (2**64, 0, 0), 0, bytes(4096)),
    lambda t: t.put_page(0, 1, 0, bytes(100)),
    lambda t: t.get_page(0, (1, 2), 0),
    lambda t: t.new_pool(persistent=True, uuid=(1, 2, 3)),
    lambda t: t.flush_page(2**31, 1, 0),
    lambda t: t.set_client(0, cap=5),
])
def test_bad_input_is_refused_before_anything_is_issued(call):
    hv = RecordingHypervisor()
    tmem = Tmem(hv, "4.12")
    with pytest.raises(ValueError):
        call(tmem)
    assert hv.calls == []
