"""Unpack one layer safely, and apply unpacked layers in order into a root filesystem.

``unpack_layer`` reads a layer blob as a stream (gzip, xz, bzip2, uncompressed, or zstd
through the ``zstd`` command when the machine has it), checks the blob's digest and its
uncompressed diff_id while it reads, and refuses a member that could touch anything outside
the target directory: absolute names, ``..`` components, device nodes and FIFOs, hard links
out of the layer or to a member not yet extracted, and any write whose path passes through a
symbolic link. A symbolic link itself is only data: its target, absolute or not, is stored
as is and resolves inside the root once that root is ``/``. Modes are kept without the
setuid/setgid bits; mtimes are kept; ownership is kept when this process is root (the runner
then drops to the image's USER, who must read what the image gave it), and left to the
current user otherwise.

``apply_layers`` builds a root filesystem from unpacked layers, lowest first, honouring
whiteouts (``.wh.<name>`` deletes ``<name>`` of lower layers) and opaque directories
(``.wh..wh..opq`` hides a directory's lower contents). Files are hard links to the layer
cache, so a root filesystem is cheap and must be mounted read-only.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from gantry.oci.config import Layer
from gantry.oci.errors import ImageError
from gantry.oci.streams import Prefixed, forget_members

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Directories a runtime mounts over; they must exist because the root is mounted read-only.
MOUNT_POINTS = ("/input", "/output", "/tmp", "/proc", "/dev", "/sys", "/opt/ml/model")
# Kept: permissions and the sticky bit. Dropped: setuid and setgid.
MODE_MASK = 0o1777
COPY_CHUNK = 1024 * 1024
MAX_MTIME = 2**32 - 1  # 2106
MAX_ID = 2**32 - 1  # uid_t; the largest is (uid_t) -1

# Unpacking stops before the disk it fills has less than this left: a layer of a few
# megabytes of gzip can stand for hundreds of gigabytes of zeros, or millions of empty files,
# and the image store shares its disk with the local stack's durable state.
MIN_FREE_BYTES = 2 * 1024**3
MIN_FREE_INODES = 100_000
_CHECK_EVERY_BYTES = 16 * 1024 * 1024
_CHECK_EVERY_MEMBERS = 1000

_AS_ROOT = os.geteuid() == 0
# What the member, not the disk, is to blame for: a name longer than the file system takes,
# more hard links to one file than it keeps.
_MEMBER_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EMLINK})


class _Hashed:
    """Reads through to ``raw``, hashing every byte that passes."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        return data


class _HashingReader(Prefixed):
    """Reads through to ``raw``, hashing every byte that passes; what ``peek`` read is read
    again."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.hashed = _Hashed(raw)
        super().__init__(b"", self.hashed)

    def peek(self, size: int) -> bytes:
        """The first ``size`` bytes, still returned by the next reads."""
        self.prefix = self.hashed.read(size)
        return self.prefix

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(COPY_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hashed.hash.hexdigest()


class _Zstd:
    """zstd through the ``zstd`` command (the standard library has no zstd before 3.14): a
    thread feeds it the blob, the caller reads the tar from its output."""

    def __init__(self, source: _HashingReader) -> None:
        self.process = subprocess.Popen(
            ["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.source = source
        self.ended = False  # its whole output was read: it is exiting on its own
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()

    def _feed(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            while chunk := self.source.read(COPY_CHUNK):
                stdin.write(chunk)
        with contextlib.suppress(BrokenPipeError, ValueError):
            stdin.close()

    def read(self, size: int = -1) -> bytes:
        assert self.process.stdout is not None
        chunk = self.process.stdout.read(size)
        if not chunk and size != 0:
            self.ended = True
        return chunk

    def readable(self) -> bool:
        return True

    def close(self) -> int:
        """Stop it (early on an error); its exit status. Once its output has ended it is
        left to exit: killed then, a busy machine would turn a good layer into a failed one."""
        if not self.ended and self.process.poll() is None and self.feeder.is_alive():
            self.process.kill()
        self.feeder.join()
        assert self.process.stdout is not None
        self.process.stdout.close()
        return self.process.wait()


class _DiskReserve:
    """Refuses the layer once what it writes would leave less than the reserve free on the
    disk of ``folder`` (checked every few megabytes and members, and at the start)."""

    def __init__(self, folder: Path, where: str, min_free_bytes: int, min_free_inodes: int):
        self.folder = folder
        self.where = where
        self.min_free_bytes = min_free_bytes
        self.min_free_inodes = min_free_inodes
        self.bytes = 0
        self.members = 0
        self.check()

    def spend(self, size: int = 0, members: int = 0) -> None:
        self.bytes += size
        self.members += members
        if self.bytes >= _CHECK_EVERY_BYTES or self.members >= _CHECK_EVERY_MEMBERS:
            self.bytes = self.members = 0
            self.check()

    def check(self) -> None:
        disk = os.statvfs(self.folder)
        if disk.f_bavail * disk.f_frsize < self.min_free_bytes:
            raise ImageError(
                f"{self.where} would leave less than {self.min_free_bytes // 1024**2} MiB free "
                "on the disk of the image store: the image unpacks to more than this machine "
                "can hold; make it smaller"
            )
        # Some file systems (btrfs) have no fixed number of inodes and report none.
        if disk.f_files and disk.f_favail < self.min_free_inodes:
            raise ImageError(
                f"{self.where} would leave fewer than {self.min_free_inodes} free files (inodes) "
                "on the disk of the image store: the image holds more files than this machine "
                "can hold; make it smaller"
            )


def _decompressed(source: _HashingReader, layer: Layer) -> IO[bytes] | _Zstd:
    magic = source.peek(6)
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        if shutil.which("zstd") is None:
            raise ImageError(
                f"Layer {layer.digest} is compressed with zstd and this machine has no zstd "
                "command: install zstd, or build the image with gzip layers"
            )
        return _Zstd(source)
    # _HashingReader has the read() these need, not the whole file protocol typeshed names.
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[call-overload]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(source)  # type: ignore[arg-type]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(source)  # type: ignore[call-overload]
    return source  # type: ignore[return-value]


def unpack_layer(
    stream: IO[bytes],
    layer: Layer,
    target: Path,
    *,
    min_free_bytes: int = MIN_FREE_BYTES,
    min_free_inodes: int = MIN_FREE_INODES,
) -> None:
    """Unpack the layer blob in ``stream`` into the empty directory ``target``; refused once
    the disk would have less than ``min_free_bytes`` or ``min_free_inodes`` left."""
    where = f"Layer {layer.digest}"
    reserve = _DiskReserve(target, where, min_free_bytes, min_free_inodes)
    blob = _HashingReader(stream)
    decompressed = _decompressed(blob, layer)
    tar_stream = _HashingReader(decompressed)  # type: ignore[arg-type]
    directories: list[tuple[Path, tarfile.TarInfo]] = []
    try:
        try:
            with tarfile.open(fileobj=tar_stream, mode="r|") as archive:  # type: ignore[call-overload]
                for member in archive:
                    forget_members(archive)
                    try:
                        reserve.spend(members=1)
                        _extract(archive, member, target, where, directories, reserve)
                    except OSError as error:
                        if error.errno not in _MEMBER_ERRNOS:
                            raise
                        raise ImageError(
                            f"{where}: the member '{_shortened(member.name)}' cannot be "
                            f"unpacked: {error.strerror}"
                        ) from None
            tar_stream.drain()
        finally:
            status = decompressed.close() if isinstance(decompressed, _Zstd) else 0
        blob.drain()
        if status != 0:
            raise ImageError(f"{where} is not valid zstd data (zstd exited with {status})")
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as error:
        raise ImageError(f"{where} is not a valid tar archive: {error}") from None
    except OSError as error:
        if error.errno is not None:  # the disk, not the data (a bad gzip stream has none)
            raise
        raise ImageError(f"{where} is not a valid tar archive: {error}") from None
    if tar_stream.digest != layer.diff_id:
        raise ImageError(
            f"{where} unpacks to {tar_stream.digest}, not the diff_id {layer.diff_id} the "
            "config names: the archive is damaged"
        )
    if blob.digest != layer.digest:
        raise ImageError(f"{where} does not match its digest (read {blob.digest}): damaged")
    for path, info in sorted(directories, key=lambda item: -len(item[0].parts)):
        if not _parents_are_folders(target, path):
            continue  # a later member removed it or replaced a parent with a link
        _finish(path, info.mode & MODE_MASK & ~0o6000, info.mtime, info.uid, info.gid)


def _parents_are_folders(root: Path, path: Path) -> bool:
    """Whether every folder from ``root`` down to ``path``'s parent is a real folder.

    A folder's mode, owner and times are applied once all members are in place; by then a
    later member (or layer) may have replaced one of its parents with a symbolic link, and
    the path would lead out of the root.
    """
    current = root
    for part in path.relative_to(root).parts[:-1]:
        current = current / part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return False
        except FileNotFoundError:
            return False
    return True


def _shortened(name: str, limit: int = 200) -> str:
    return name if len(name) <= limit else f"{name[: limit // 2]}…{name[-limit // 2 :]}"


def _parts(name: str, where: str) -> list[str]:
    """The member name's components, refused if absolute or with ``..``."""
    if name.startswith("/"):
        raise ImageError(f"{where}: the member '{name}' has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"{where}: the member '{name}' contains '..'")
    return parts


def _walk_parents(root: Path, parts: list[str], where: str, name: str, *, create: bool) -> Path:
    """The directory holding ``parts[-1]``, every component checked never to be a link."""
    current = root
    for part in parts[:-1]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            if not create:
                raise ImageError(f"{where}: '{name}' refers to a missing directory") from None
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(mode):
            raise ImageError(
                f"{where}: the member '{name}' would be written through the symbolic link "
                f"'{current.relative_to(root)}'"
            )
        if not stat.S_ISDIR(mode):
            raise ImageError(f"{where}: '{current.relative_to(root)}' is not a directory")
    return current


def _remove(path: Path) -> None:
    """Remove whatever is at ``path`` without following a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        remove_tree(path)
    else:
        os.unlink(path)


def remove_tree(path: Path) -> None:
    """rmtree that also removes directories the image made read-only."""

    def make_writable(function: Any, failed: str, _exc: Any) -> None:
        parent = os.path.dirname(failed)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
            # chmod follows links: a link in the image may name any file of this machine.
            if not os.path.islink(failed):
                os.chmod(failed, 0o700)
        with contextlib.suppress(FileNotFoundError):
            function(failed)

    shutil.rmtree(path, onerror=make_writable)


def _mtime(value: float) -> float:
    """A member's mtime as the file system can store it: a pax header may give any number
    (1e300, nan), which utime refuses with an OverflowError or ValueError."""
    return value if 0 <= value <= MAX_MTIME else 0


def _finish(path: Path, mode: int, mtime: float, uid: int, gid: int) -> None:
    if _AS_ROOT:
        os.lchown(path, uid, gid)
    if not stat.S_ISLNK(os.lstat(path).st_mode):
        os.chmod(path, mode)
    os.utime(path, (_mtime(mtime),) * 2, follow_symlinks=False)


def _extract(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    root: Path,
    where: str,
    directories: list[tuple[Path, tarfile.TarInfo]],
    reserve: _DiskReserve,
) -> None:
    name = member.name
    parts = _parts(name, where)
    if not parts:
        return  # the layer's own root entry
    if not (0 <= member.uid < MAX_ID and 0 <= member.gid < MAX_ID):
        # lchown takes 32-bit ids, and -1 (2**32 - 1) means "unchanged".
        raise ImageError(f"{where}: the member '{name}' has an owner out of range")
    if member.ischr() or member.isblk() or member.isfifo():
        raise ImageError(f"{where}: the member '{name}' is a device node or FIFO")
    if not (member.isdir() or member.isfile() or member.issym() or member.islnk()):
        raise ImageError(f"{where}: the member '{name}' has an unsupported type")
    parent = _walk_parents(root, parts, where, name, create=True)
    path = parent / parts[-1]
    existing = None
    with contextlib.suppress(FileNotFoundError):
        existing = os.lstat(path).st_mode
    if member.isdir():
        if existing is None or not stat.S_ISDIR(existing):
            if existing is not None:
                os.unlink(path)
            os.mkdir(path, 0o755)
        directories.append((path, member))
        return
    if existing is not None:
        _remove(path)
    if member.issym():
        os.symlink(member.linkname, path)
        if _AS_ROOT:
            os.lchown(path, member.uid, member.gid)
        os.utime(path, (_mtime(member.mtime),) * 2, follow_symlinks=False)
        return
    if member.islnk():
        target_parts = _parts(member.linkname, where)
        if not target_parts:
            raise ImageError(f"{where}: the hard link '{name}' points at the layer's root")
        target_parent = _walk_parents(root, target_parts, where, member.linkname, create=False)
        target = target_parent / target_parts[-1]
        try:
            target_mode = os.lstat(target).st_mode
        except FileNotFoundError:
            raise ImageError(
                f"{where}: the hard link '{name}' points at '{member.linkname}', which is not "
                "in this layer before it"
            ) from None
        if not stat.S_ISREG(target_mode):
            raise ImageError(f"{where}: the hard link '{name}' points at a non-regular file")
        os.link(target, path, follow_symlinks=False)
        return
    source = archive.extractfile(member)
    assert source is not None
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        while chunk := source.read(COPY_CHUNK):
            reserve.spend(len(chunk))
            handle.write(chunk)
    _finish(path, member.mode & MODE_MASK & ~0o6000, member.mtime, member.uid, member.gid)


# --- Root filesystem ---------------------------------------------------------------------------


def apply_layers(layer_dirs: Iterable[Path], rootfs: Path) -> None:
    """Apply unpacked layers in order into the empty directory ``rootfs``."""
    directories: dict[Path, os.stat_result] = {}
    for layer_dir in layer_dirs:
        _apply_dir(layer_dir, rootfs, directories)
    for path, info in sorted(directories.items(), key=lambda item: -len(item[0].parts)):
        if not _parents_are_folders(rootfs, path):
            continue  # an upper layer deleted a parent or replaced it with a link
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                continue  # an upper layer replaced it
        except FileNotFoundError:
            continue  # an upper layer deleted it
        if _AS_ROOT:
            os.lchown(path, info.st_uid, info.st_gid)
        os.chmod(path, stat.S_IMODE(info.st_mode))
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    _add_mount_points(rootfs)
    rootfs.chmod(0o755)


def _apply_dir(source: Path, target: Path, directories: dict[Path, os.stat_result]) -> None:
    names = sorted(os.listdir(source))
    # Whiteouts first: they delete from the lower layers only, never this layer's own entries.
    if OPAQUE_MARKER in names:
        for name in os.listdir(target):
            _remove(target / name)
    for name in names:
        if name.startswith(WHITEOUT_PREFIX) and not name.startswith(WHITEOUT_PREFIX * 2):
            hidden = name[len(WHITEOUT_PREFIX) :]
            if hidden not in ("", ".", "..") and "/" not in hidden:
                _remove(target / hidden)
    for name in names:
        if name.startswith(WHITEOUT_PREFIX):
            continue
        src, dst = source / name, target / name
        info = os.lstat(src)
        existing = None
        with contextlib.suppress(FileNotFoundError):
            existing = os.lstat(dst).st_mode
        if stat.S_ISDIR(info.st_mode):
            # A directory replaces a lower non-directory (a link included) and is never
            # entered through a link.
            if existing is None or not stat.S_ISDIR(existing):
                if existing is not None:
                    os.unlink(dst)
                os.mkdir(dst, 0o755)
            directories[dst] = info
            _apply_dir(src, dst, directories)
            continue
        if existing is not None:
            _remove(dst)
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(src), dst)
            if _AS_ROOT:
                os.lchown(dst, info.st_uid, info.st_gid)
            os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
        else:
            try:
                os.link(src, dst, follow_symlinks=False)
            except OSError:
                shutil.copy2(src, dst, follow_symlinks=False)


def _add_mount_points(rootfs: Path) -> None:
    for mount_point in MOUNT_POINTS:
        current = rootfs
        for part in mount_point.strip("/").split("/"):
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                os.mkdir(current, 0o755)
                continue
            if not stat.S_ISDIR(mode):
                # A link here could point anywhere once mounted over; a directory it is.
                os.unlink(current)
                os.mkdir(current, 0o755)
        if mount_point == "/tmp":
            current.chmod(0o1777)
