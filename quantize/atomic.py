"""Output that is either complete or absent: write to a hidden temporary name in the target
folder, rename over the target only on success, remove the temporary on any failure. A run
killed outright (SIGKILL, power cut) leaves its temporaries; they carry the writer's process id,
and the next run for the same output removes those whose process is gone."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import QuantizeError


def check_writable_folder(out: Path) -> None:
    folder = out.parent
    if not folder.is_dir():
        raise QuantizeError(folder, "output folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise QuantizeError(out, "cannot write here: permission denied")
    if out.is_dir():
        raise QuantizeError(out, "is a folder; give a file name ending in .gguf")


def _temp_prefix(out: Path) -> str:
    return f".{out.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove temporaries that a killed run left beside `out`; return them."""
    pattern = re.compile(re.escape(f".{out.name}.") + r"(\d+)\.[^/]*(\.partial|\.float\.gguf)$")
    removed = []
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            m = pattern.match(p.name)
            if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status);
    elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_file_mode() -> int:
    """The mode an ordinary new file gets (0644 under umask 022): what open() would give it.
    mkstemp makes its files 0600, right for a temporary but not for a model the user keeps, which
    another account or a service may need to read."""
    return 0o666 & ~current_umask()


def publish_mode(path: Path) -> None:
    """Give a finished output the umask's mode. A hard link into a cache owned by someone else
    keeps the mode it has (it already has the one its owner gave it)."""
    try:
        os.chmod(path, user_file_mode())
    except PermissionError:
        pass


@contextmanager
def atomic_path(out: Path, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path beside `out`; on success it becomes `out`, with the mode the umask
    gives new files (not mkstemp's 0600)."""
    check_writable_folder(out)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(out), suffix=suffix, dir=out.parent)
    except OSError as e:
        raise QuantizeError(out, f"cannot create the output file ({e.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        publish_mode(tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise QuantizeError(out, _os_error_text(e)) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def scratch_path(beside: Path, suffix: str) -> Iterator[Path]:
    """A temporary file beside the output (same disk), always removed afterwards."""
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(beside), suffix=suffix, dir=beside.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _os_error_text(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device; nothing was written"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "cannot write here: " + (e.strerror or "permission denied")
    return f"write failed ({e.strerror or e})"
