"""Atomic file writes and plain-name checks: nothing half-written is ever mistaken for complete,
and no name taken from data (manifest items, object keys, member names) leaves its directory.

Every file one stage hands to another is written to a temporary name in the same directory,
flushed and fsynced, then renamed over the final name with `os.replace` (atomic on POSIX). A
full disk (ENOSPC) or quota (EDQUOT) becomes a one-line `ViewFusionError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

from viewfusion.errors import ViewFusionError

# Letters, digits, '_', '-', '.', '+', not starting with '.' or '-': no separator, no '..',
# no hidden file, never an option, the same on every filesystem.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,199}")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def plain_name(value, what: str) -> str:
    """`value` if it is a plain file name (PLAIN_NAME), else a ViewFusionError naming `what`."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value) or ".." in value:
        raise ViewFusionError(f"{what}: {value!r} is not a plain name (letters, digits, _ - . +; "
                              "no path separator, no leading dot); regenerate the file that holds it")
    return value


def wrong_kind(err: OSError) -> ViewFusionError | None:
    """The one-line error for a path of the wrong kind that `err` reports (a file where a folder
    is expected, or the reverse), naming the path the user gave; None for any other OSError."""
    if isinstance(err, IsADirectoryError):
        # os.replace(temporary, target) names both; the target is the user's path
        path = next((p for p in (err.filename2, err.filename) if p is not None and os.path.isdir(p)), None)
        return None if path is None else ViewFusionError(f"{path}: is a directory, expected a file")
    if isinstance(err, NotADirectoryError | FileExistsError) and err.filename is not None:
        path = Path(os.fsdecode(err.filename))
        # the file among the path's folders (`out.json/chunks`: out.json), or the path itself
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            return ViewFusionError(f"{blocking}: is a file, expected a directory")
    return None


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk or quota while writing `path` into a one-line ViewFusionError."""
    try:
        yield
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        raise ViewFusionError(f"{path}: no space left on the device or quota exceeded "
                              f"({os.strerror(err.errno)}); free space and rerun") from None


def _raise_disk_full(err: BaseException, path: Path) -> None:
    """Re-raise `err` as a disk-full ViewFusionError when it (or its cause) is ENOSPC/EDQUOT;
    torch.save and zipfile wrap the OSError in a RuntimeError ('unexpected pos ...')."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            with disk_errors(path):
                raise seen
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, RuntimeError) and "unexpected pos" in str(err):
        raise ViewFusionError(f"{path}: the write stopped part-way ({str(err).strip()}), most often "
                              "a full disk or quota; free space and rerun") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it to `path`."""
    path = Path(path)
    if path.is_dir():  # found before the work whose result it would refuse
        raise ViewFusionError(f"{path}: is a directory, expected a file")
    tmp = path.with_name(f".{path.name}.tmp-{owner_tag()}")
    try:
        with disk_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with disk_errors(path), open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        _raise_disk_full(err, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


# `.NAME.tmp-<host>-<pid>`; names without a host were written by an older version on this host.
_TEMP = re.compile(r"\..+\.tmp-(?:(?P<host>.+)-)?(?P<pid>[0-9]+)")


def owner_tag() -> str:
    """`<host>-<pid>` of this process, which temp and scratch names carry: on a shared
    filesystem a pid alone says nothing about a process of another machine."""
    return f"{socket.gethostname()}-{os.getpid()}"


def abandoned(host: str | None, pid: int) -> bool:
    """Whether the owner a temp or scratch name records is a process of this host that is gone
    (names without a host were written by an older version, on this host)."""
    return host in (None, socket.gethostname()) and not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temporary files of atomic writes that a killed process left in `folder`: those
    of this host whose process is gone (a live writer's, or another host's, are kept)."""
    folder, removed = Path(folder), 0
    if not folder.is_dir():
        return 0
    for path in folder.glob(".*.tmp-*"):
        match = _TEMP.fullmatch(path.name)
        if match is None or not path.is_file() or path.is_symlink():
            continue
        if abandoned(match["host"], int(match["pid"])):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (a multi-GB zip never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hex sha256 of `obj` as canonical JSON (sorted keys, no spaces): a fingerprint of a config
    or settings dict that does not depend on key order or formatting."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
