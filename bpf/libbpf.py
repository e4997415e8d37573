"""A small typed ctypes binding to the system libbpf (libbpf.so.1): only the calls skiff's loader makes.

libbpf 1.x reports failure by returning NULL (object API) or a negative errno (low-level bpf_* calls) and
setting errno; every wrapper here turns that into an OSError carrying errno and the name of the call, so
callers deal with one exception type. libbpf's own log lines go to the `skiff.bpf.libbpf` logger instead of
stderr, and the last few are kept for error messages.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
from typing import Any

log = logging.getLogger("skiff.bpf.libbpf")

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libc = ctypes.CDLL(None, use_errno=True)

_vp = ctypes.c_void_p
_int = ctypes.c_int
_str = ctypes.c_char_p
_u32p = ctypes.POINTER(ctypes.c_uint32)

_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "bpf_object__open_file": (_vp, [_str, _vp]),
    "bpf_object__load": (_int, [_vp]),
    "bpf_object__close": (None, [_vp]),
    "bpf_object__find_program_by_name": (_vp, [_vp, _str]),
    "bpf_object__find_map_by_name": (_vp, [_vp, _str]),
    "bpf_map__fd": (_int, [_vp]),
    "bpf_map__max_entries": (ctypes.c_uint32, [_vp]),
    "bpf_map__set_pin_path": (_int, [_vp, _str]),
    "bpf_program__pin": (_int, [_vp, _str]),
    "bpf_program__attach_netns": (_vp, [_vp, _int]),
    "bpf_link__pin": (_int, [_vp, _str]),
    "bpf_link__open": (_vp, [_str]),
    "bpf_link__fd": (_int, [_vp]),
    "bpf_link__update_program": (_int, [_vp, _vp]),
    "bpf_link__destroy": (_int, [_vp]),
    "bpf_link_detach": (_int, [_int]),
    "bpf_obj_get_info_by_fd": (_int, [_int, _vp, _u32p]),
    "bpf_obj_get": (_int, [_str]),
    "bpf_map_update_elem": (_int, [_int, _vp, _vp, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (_int, [_int, _vp, _vp]),
    "bpf_map_delete_elem": (_int, [_int, _vp]),
    "bpf_map_get_next_key": (_int, [_int, _vp, _vp]),
    "bpf_map_update_batch": (_int, [_int, _vp, _vp, _u32p, _vp]),
    "bpf_map_delete_batch": (_int, [_int, _vp, _u32p, _vp]),
    "bpf_map_lookup_batch": (_int, [_int, _vp, _vp, _vp, _vp, _u32p, _vp]),
    "libbpf_num_possible_cpus": (_int, []),
}
for _name, (_restype, _argtypes) in _SIGNATURES.items():
    _fn = getattr(_lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes

BPF_ANY = 0

# Keep the last libbpf lines: the errno alone rarely says which map or section was at fault.
_recent: collections.deque[str] = collections.deque(maxlen=8)
_PrintFn = ctypes.CFUNCTYPE(_int, _int, _str, _vp)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, _str, _vp]
_libc.vsnprintf.restype = _int


def _print(level: int, fmt: bytes | None, args: int | None) -> int:
    buf = ctypes.create_string_buffer(1024)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    line = buf.value.decode(errors="replace").rstrip()
    if line:
        _recent.append(line)
        log.debug("%s", line)
    return 0


_print_cb = _PrintFn(_print)  # module-level so the trampoline outlives every call into libbpf
_lib.libbpf_set_print(_print_cb)


def recent_messages() -> list[str]:
    """The last lines libbpf logged, oldest first."""
    return list(_recent)


def _fail(call: str) -> OSError:
    err = ctypes.get_errno() or 5  # EIO if libbpf failed without saying why
    return OSError(err, f"{call}: {os.strerror(err)}")


def _check(rc: int, call: str) -> int:
    if rc < 0:
        # libbpf 1.x sets errno too, but the return value is the documented source of truth.
        err = -rc
        raise OSError(err, f"{call}: {os.strerror(err)}")
    return rc


def _pointer(ptr: int | None, call: str) -> int:
    if not ptr:
        raise _fail(call)
    return ptr


def _path(path: os.PathLike[str] | str) -> bytes:
    return os.fsencode(path)


def object_open(path: os.PathLike[str] | str) -> int:
    ctypes.set_errno(0)
    return _pointer(_lib.bpf_object__open_file(_path(path), None), "bpf_object__open_file")


def object_load(obj: int) -> None:
    _check(_lib.bpf_object__load(obj), "bpf_object__load")


def object_close(obj: int) -> None:
    _lib.bpf_object__close(obj)


def find_program(obj: int, name: str) -> int:
    ctypes.set_errno(0)
    return _pointer(_lib.bpf_object__find_program_by_name(obj, name.encode()), f"find program {name}")


def find_map(obj: int, name: str) -> int:
    ctypes.set_errno(0)
    return _pointer(_lib.bpf_object__find_map_by_name(obj, name.encode()), f"find map {name}")


def map_fd(bpf_map: int) -> int:
    return _check(_lib.bpf_map__fd(bpf_map), "bpf_map__fd")


def map_max_entries(bpf_map: int) -> int:
    return int(_lib.bpf_map__max_entries(bpf_map))


def map_set_pin_path(bpf_map: int, path: os.PathLike[str] | str) -> None:
    _check(_lib.bpf_map__set_pin_path(bpf_map, _path(path)), "bpf_map__set_pin_path")


def program_pin(prog: int, path: os.PathLike[str] | str) -> None:
    _check(_lib.bpf_program__pin(prog, _path(path)), "bpf_program__pin")


def program_attach_netns(prog: int, netns_fd: int) -> int:
    ctypes.set_errno(0)
    return _pointer(_lib.bpf_program__attach_netns(prog, netns_fd), "bpf_program__attach_netns")


def link_pin(link: int, path: os.PathLike[str] | str) -> None:
    _check(_lib.bpf_link__pin(link, _path(path)), "bpf_link__pin")


def link_open(path: os.PathLike[str] | str) -> int:
    ctypes.set_errno(0)
    return _pointer(_lib.bpf_link__open(_path(path)), "bpf_link__open")


def link_fd(link: int) -> int:
    return _check(_lib.bpf_link__fd(link), "bpf_link__fd")


def link_update_program(link: int, prog: int) -> None:
    _check(_lib.bpf_link__update_program(link, prog), "bpf_link__update_program")


def link_destroy(link: int) -> None:
    """Free the handle; the kernel link lives on while a pin or another fd holds it."""
    _lib.bpf_link__destroy(link)


def link_detach(link: int) -> None:
    """Detach the kernel link now, whoever else still holds an fd or a pin on it."""
    _check(_lib.bpf_link_detach(link_fd(link)), "bpf_link_detach")


def obj_info(fd: int, size: int = 256) -> bytes:
    """Raw struct bpf_*_info for fd; the caller knows the layout it asked for."""
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    _check(_lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(length)), "bpf_obj_get_info_by_fd")
    return buf.raw[: length.value]


def obj_get(path: os.PathLike[str] | str) -> int:
    """A new fd for a pinned object (the caller closes it)."""
    return _check(_lib.bpf_obj_get(_path(path)), f"bpf_obj_get {path}")


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    _check(_lib.bpf_map_update_elem(fd, key, value, flags), "bpf_map_update_elem")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under key, or None if there is none."""
    buf = ctypes.create_string_buffer(value_size)
    rc = _lib.bpf_map_lookup_elem(fd, key, buf)
    if rc == -2:  # ENOENT: absent is an answer, not an error
        return None
    _check(rc, "bpf_map_lookup_elem")
    return buf.raw


def map_delete(fd: int, key: bytes) -> bool:
    """Delete key; False if it was not there."""
    rc = _lib.bpf_map_delete_elem(fd, key)
    if rc == -2:
        return False
    _check(rc, "bpf_map_delete_elem")
    return True


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a map, walking bpf_map_get_next_key from 'no key'."""
    keys: list[bytes] = []
    cur: bytes | None = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        rc = _lib.bpf_map_get_next_key(fd, cur, nxt)
        if rc == -2:  # ENOENT: walked past the last key
            return keys
        _check(rc, "bpf_map_get_next_key")
        cur = nxt.raw
        keys.append(cur)


def map_lookup_all(fd: int, key_size: int, value_size: int, max_entries: int) -> tuple[bytes, bytes]:
    """Every key and value of a hash map in one syscall, packed; raises BatchError if unsupported.

    Asking for max_entries at once means the kernel can never answer ENOSPC (a hash bucket bigger than the
    batch), and ENOENT simply says the walk reached the end.
    """
    keys = ctypes.create_string_buffer(key_size * max_entries)
    values = ctypes.create_string_buffer(value_size * max_entries)
    token = ctypes.create_string_buffer(8)  # the hash map's batch cursor is a __u32 bucket index
    n = ctypes.c_uint32(max_entries)
    rc = _lib.bpf_map_lookup_batch(fd, None, token, keys, values, ctypes.byref(n), None)
    if rc < 0 and rc != -2:
        raise BatchError(-rc, "bpf_map_lookup_batch", 0)
    return keys.raw[: key_size * n.value], values.raw[: value_size * n.value]


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int) -> int:
    """Write count packed key/value pairs in one syscall; returns how many the kernel applied before failing.

    Raises OSError with the number done in `args` when the kernel stops early.
    """
    n = ctypes.c_uint32(count)
    rc = _lib.bpf_map_update_batch(fd, keys, values, ctypes.byref(n), None)
    if rc < 0:
        raise BatchError(-rc, "bpf_map_update_batch", n.value)
    return n.value


def map_delete_batch(fd: int, keys: bytes, count: int) -> int:
    n = ctypes.c_uint32(count)
    rc = _lib.bpf_map_delete_batch(fd, keys, ctypes.byref(n), None)
    if rc < 0:
        raise BatchError(-rc, "bpf_map_delete_batch", n.value)
    return n.value


class BatchError(OSError):
    """A batch call stopped after `done` elements."""

    def __init__(self, err: int, call: str, done: int) -> None:
        super().__init__(err, f"{call}: {os.strerror(err)}")
        self.done = done


def num_possible_cpus() -> int:
    return _check(_lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")
