"""Where skiff's BPF objects live on bpffs, and the lock that gives one process at a time the right to steer.

The lock is a flock on the instance's pin directory itself: bpffs accepts no regular files, and tying the
lock to the directory (not to a path under /run) means two supervisors can only collide when they would
really share pinned maps. The holder is named from /proc/locks, so the operator learns which pid to look at.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import time
from pathlib import Path

BPF_FS_MAGIC = 0xCAFE4A11
DEFAULT_PIN_ROOT = Path("/sys/fs/bpf")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


class PinError(Exception):
    """bpffs or the instance lock is not usable; the message is meant for the operator."""


def fs_magic(path: Path) -> int:
    """f_type of the filesystem holding path (os.statvfs does not expose it)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64; f_type comes first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs {path}: {os.strerror(err)}")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def ensure_bpffs(pin_root: Path) -> None:
    """Make sure pin_root is on bpffs, mounting it only at the conventional /sys/fs/bpf."""
    try:
        if fs_magic(pin_root) == BPF_FS_MAGIC:
            return
    except FileNotFoundError as exc:
        if pin_root != DEFAULT_PIN_ROOT:
            raise PinError(f"pin root {pin_root} does not exist") from exc
    if pin_root != DEFAULT_PIN_ROOT:
        # Mounting over an arbitrary directory the operator named would hide what is there.
        raise PinError(f"pin root {pin_root} is not a bpf filesystem (mount -t bpf bpf {pin_root})")
    pin_root.mkdir(parents=True, exist_ok=True)
    if _libc.mount(b"bpf", os.fsencode(pin_root), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise PinError(f"cannot mount bpffs at {pin_root}: {os.strerror(err)}")


def lock_dir(pin_dir: Path, wait: float = 0.0) -> int:
    """Create pin_dir and hold an exclusive flock on it; returns the fd that holds the lock.

    Retries a bounded number of times when a previous holder removes the directory (clean shutdown with
    unpin) between our mkdir and our flock: the lock must sit on the directory that is actually there. With
    `wait`, a held lock is waited for up to that many seconds (a predecessor handing over).
    """
    for _ in range(5):
        pin_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _flock(fd, wait)
        except BlockingIOError:
            holder = lock_holder(fd)
            os.close(fd)
            who = f" by {holder}" if holder else ""
            raise PinError(f"{pin_dir} is locked{who}; another skiff supervisor is steering it") from None
        if os.fstat(fd).st_nlink > 0:
            return fd
        os.close(fd)
    raise PinError(f"{pin_dir} keeps disappearing while being locked")


def _flock(fd: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)  # bounded by `wait`: flock has no timeout of its own


def unlock_dir(fd: int) -> None:
    os.close(fd)  # closing the last fd drops the flock


def lock_holder(fd: int) -> str | None:
    """'pid N (comm)' of the process holding a flock on the file behind fd, if /proc/locks names it."""
    st = os.fstat(fd)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF"; blocked waiters carry a "->" marker.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
            pid = fields[4]
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                return f"pid {pid}"
            return f"pid {pid} ({comm})"
    return None


def remove_pins(pin_dir: Path) -> None:
    """Unlink every pin in pin_dir, then the directory and an empty parent; absent pins are fine."""
    try:
        entries = list(pin_dir.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        entry.unlink(missing_ok=True)
    for d in (pin_dir, pin_dir.parent):
        try:
            d.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise
            break
