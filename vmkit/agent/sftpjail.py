"""An SFTP server confined to one shared folder, for reverse-sshfs shares.

The guest's ``sshfs -o passive`` speaks SFTP over the SSH channel the agent opened; paramiko's
``SFTPServer`` answers on that channel, and ``JailedSFTP`` decides every request:

- Only paths at or below the share's folder exist: the guest names them by their host path
  (``:SOURCE`` is where sshfs starts), and anything else, ``..`` included, is refused.
- Every path is walked one component at a time from the share's root with ``O_NOFOLLOW``, and
  the last step works on the directory's descriptor: a symlink is never followed on the host
  (the guest's kernel follows symlinks itself, so sshfs never needs the host to), and a symlink
  swapped in mid-request cannot lead out of the share.
- Read-only shares refuse every change here, whatever the guest mounts.
- No setuid/setgid bit is ever set and ``chown`` is refused: files are the host user's.

Windows has neither ``dir_fd`` nor ``O_NOFOLLOW``, so there the walk is by path: every
component is checked with ``lstat`` and refused if it is a symlink or any other reparse point
(a junction), and names Windows would read as something else (``a\\b``, ``x:stream``, ``NUL``,
a trailing dot) are refused. The check and the use are two steps; a host program that swaps a
component for a link between them could lead one request out. The guest cannot do that: it
cannot make a link here (``symlink`` is refused on Windows) and every existing one is refused.
The SFTP path of a Windows folder is its path with ``/`` (``C:/Users/x``: ``sftp_path``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import paramiko
from paramiko.sftp import SFTP_OK, SFTP_OP_UNSUPPORTED, SFTP_PERMISSION_DENIED

if TYPE_CHECKING:
    from typing_extensions import Buffer

T = TypeVar("T")
if sys.platform == "win32":
    _WALK = _NAME = _LIST = 0  # unused: Windows walks by path
    _NOFOLLOW = 0
    # Without it Windows opens files in text mode and changes line ends.
    _OPEN_EXTRA = os.O_BINARY | os.O_NOINHERIT
elif sys.platform == "linux":
    # O_PATH: a handle on the name itself (a symlink's own, too) that reads nothing.
    _WALK = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
    _NAME = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
else:
    # No O_PATH (macOS): directories are opened for reading; attributes of a symlink itself
    # cannot be changed (ELOOP), which sshfs does not need.
    _WALK = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
    _NAME = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
if sys.platform != "win32":
    _NOFOLLOW = os.O_NOFOLLOW
    _OPEN_EXTRA = os.O_CLOEXEC
    _LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Walk with directory descriptors (race-free); by path where the OS has no ``dir_fd``.
WALK_BY_FD = sys.platform != "win32"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
#: What a mode may carry through a share: permissions and the sticky bit, never set-id bits.
_MODE_BITS = 0o1777


class _Refused(Exception):
    """A request outside the share (or a change to a read-only one)."""


def serve(
    channel: paramiko.Channel, root: str, *, readonly: bool, walk_by_fd: bool = WALK_BY_FD
) -> threading.Thread:
    """Answer SFTP on ``channel`` (an open session channel whose other end is an SFTP
    client), confined to folder ``root``; returns the running server thread.

    ``walk_by_fd=False`` walks by path, as on Windows (tests run that walk on POSIX too)."""
    server = paramiko.SFTPServer(
        channel, "sftp", paramiko.ServerInterface(), JailedSFTP, root, readonly, walk_by_fd
    )
    server.daemon = True
    server.start()
    return server


def sftp_path(folder: str) -> str:
    """The SFTP (and sshfs) name of host folder ``folder``: Windows paths get ``/``."""
    return folder.replace("\\", "/") if sys.platform == "win32" else folder


class JailedSFTP(paramiko.SFTPServerInterface):
    """SFTP requests answered inside ``root`` only (see the module docstring)."""

    def __init__(
        self, server: paramiko.ServerInterface, root: str, readonly: bool, walk_by_fd: bool
    ) -> None:
        super().__init__(server)
        self.folder = root
        self.root = posixpath.normpath(sftp_path(root))
        self.readonly = readonly
        self.walk_by_fd = walk_by_fd

    # -- paths ----------------------------------------------------------------------------

    def _parts(self, path: str) -> list[str]:
        """The components of ``path`` below the root; refused if it is not in the share."""
        full = posixpath.normpath(posixpath.join(self.root, path))
        if full.startswith("//"):
            full = "/" + full.lstrip("/")
        if full == self.root:
            return []
        prefix = self.root.rstrip("/") + "/"
        if not full.startswith(prefix):
            raise _Refused(path)
        return full[len(prefix) :].split("/")

    @contextlib.contextmanager
    def _at(self, path: str) -> Iterator[tuple[int | None, str]]:
        """``(directory fd, name)`` of ``path``'s last component, reached without following
        any symlink; the root itself is ``(root fd, ".")``. Walking by path, it is ``(None,
        the host path)``, every directory on the way checked."""
        parts = self._parts(path)
        if not self.walk_by_fd:
            yield None, self._checked_path(path, parts)
            return
        fd = os.open(self.root, _WALK)
        try:
            for name in parts[:-1]:
                try:
                    nxt = os.open(name, _WALK, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _Refused(path) from e  # a symlink (or file) on the way
                    raise
                os.close(fd)
                fd = nxt
            yield fd, parts[-1] if parts else "."
        finally:
            os.close(fd)

    def _checked_path(self, path: str, parts: list[str]) -> str:
        """The host path of ``parts``, each directory on the way a real one (not a link)."""
        here = self.folder
        for i, name in enumerate(parts):
            if not _plain_name(name):
                raise _Refused(path)
            here = os.path.join(here, name)
            if i < len(parts) - 1:
                st = os.lstat(here)
                if _is_link(st) or not stat.S_ISDIR(st.st_mode):
                    raise _Refused(path)
        return here

    def _not_a_link(self, d: int | None, name: str) -> None:
        """Refuse ``name`` if it is a link; only needed walking by path, where opening does
        not refuse one (``O_NOFOLLOW``) as it does walking by descriptor."""
        if d is None:
            with contextlib.suppress(FileNotFoundError):
                if _is_link(os.lstat(name)):
                    raise _Refused(name)

    def _change(self) -> None:
        if self.readonly:
            raise _Refused("read-only share")

    # -- requests -------------------------------------------------------------------------

    def canonicalize(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.root, path))

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        def run() -> list[paramiko.SFTPAttributes]:
            with self._at(path) as (d, name):
                if _is_link(os.stat(name, dir_fd=d, follow_symlinks=False)):
                    raise _Refused(path)
                if d is None:
                    return _listing(name)
                fd = os.open(name, _LIST, dir_fd=d)
            try:
                return _listing(fd)
            finally:
                os.close(fd)

        return _answer(run)

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        # SFTP's stat follows symlinks; the guest resolves them itself, so the host answers
        # with the link's own attributes rather than follow it anywhere.
        return self.lstat(path)

    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        def run() -> paramiko.SFTPAttributes:
            with self._at(path) as (d, name):
                return paramiko.SFTPAttributes.from_stat(
                    os.stat(name, dir_fd=d, follow_symlinks=False)
                )

        return _answer(run)

    def open(
        self, path: str, flags: int, attr: paramiko.SFTPAttributes
    ) -> paramiko.SFTPHandle | int:
        def run() -> paramiko.SFTPHandle:
            if flags & _WRITE_FLAGS:
                self._change()
            mode = (attr.st_mode or 0o666) & _MODE_BITS if attr is not None else 0o666
            with self._at(path) as (d, name):
                self._not_a_link(d, name)
                fd = os.open(name, flags | _NOFOLLOW | _OPEN_EXTRA, mode, dir_fd=d)
            return _Handle(fd, flags, readonly=self.readonly)

        return _answer(run)

    def remove(self, path: str) -> int:
        def run() -> int:
            self._change()
            with self._at(path) as (d, name):
                os.unlink(name, dir_fd=d)
            return SFTP_OK

        return _answer(run)

    def rmdir(self, path: str) -> int:
        def run() -> int:
            self._change()
            with self._at(path) as (d, name):
                os.rmdir(name, dir_fd=d)
            return SFTP_OK

        return _answer(run)

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        def run() -> int:
            self._change()
            mode = (attr.st_mode or 0o777) & 0o777 if attr is not None else 0o777
            with self._at(path) as (d, name):
                os.mkdir(name, mode, dir_fd=d)
            return SFTP_OK

        return _answer(run)

    def rename(self, oldpath: str, newpath: str) -> int:
        def run() -> int:
            self._change()
            with self._at(oldpath) as (d1, n1), self._at(newpath) as (d2, n2):
                with contextlib.suppress(FileNotFoundError):
                    os.stat(n2, dir_fd=d2, follow_symlinks=False)
                    # SFTP's rename must not replace (posix_rename does).
                    raise FileExistsError(errno.EEXIST, n2)
                os.rename(n1, n2, src_dir_fd=d1, dst_dir_fd=d2)
            return SFTP_OK

        return _answer(run)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        def run() -> int:
            self._change()
            with self._at(oldpath) as (d1, n1), self._at(newpath) as (d2, n2):
                os.replace(n1, n2, src_dir_fd=d1, dst_dir_fd=d2)
            return SFTP_OK

        return _answer(run)

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        def run() -> int:
            self._change()
            with self._at(path) as (d, name):
                if d is None:
                    _set_attrs(name, attr)
                    return SFTP_OK
                fd = os.open(name, _NAME, dir_fd=d)
            try:
                _set_attrs(fd, attr)
            finally:
                os.close(fd)
            return SFTP_OK

        return _answer(run)

    def readlink(self, path: str) -> str | int:
        def run() -> str:
            with self._at(path) as (d, name):
                return os.readlink(name, dir_fd=d)

        return _answer(run)

    def symlink(self, target_path: str, path: str) -> int:
        # The link's text is only ever followed by the guest (never by this server). On
        # Windows a link would be followed by the walk's own opens: none is made there.
        def run() -> int:
            self._change()
            if sys.platform == "win32":
                raise NotImplementedError("symlinks in a share on a Windows host")
            with self._at(path) as (d, name):
                os.symlink(target_path, name, dir_fd=d)
            return SFTP_OK

        return _answer(run)


#: Windows' reserved device names, which name a device in every folder.
_DEVICES = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)


def _plain_name(name: str) -> bool:
    """Whether ``name`` means one entry of its folder on every host OS: no separator, no
    drive or stream (``:``), no device name, no trailing dot or space (Windows drops them)."""
    return (
        name not in ("", ".", "..")
        and not any(c in name for c in "\\:\0")
        and not _DEVICES.fullmatch(name)
        and not name.endswith((".", " "))
    )


def _is_link(st: os.stat_result) -> bool:
    """A symlink, or on Windows any reparse point (a junction, a mount point)."""
    if sys.platform == "win32":
        return bool(st.st_file_attributes & stat.FILE_ATTRIBUTE_REPARSE_POINT)
    return stat.S_ISLNK(st.st_mode)


def _listing(folder: int | str) -> list[paramiko.SFTPAttributes]:
    """The entries of ``folder``: a directory descriptor, or a checked path."""
    with os.scandir(folder) as it:
        names = [e.name for e in it]
    out = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            if isinstance(folder, int):
                st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            else:
                st = os.lstat(os.path.join(folder, name))
            out.append(paramiko.SFTPAttributes.from_stat(st, name))
    return out


class _Handle(paramiko.SFTPHandle):
    """An open file: positional reads and writes on its descriptor."""

    def __init__(self, fd: int, flags: int, *, readonly: bool) -> None:
        super().__init__(flags)
        self.fd = fd
        self.readonly = readonly
        self._seek = threading.Lock()  # Windows has no pread/pwrite: seek and read as one

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def read(self, offset: int, length: int) -> bytes | int:
        def run() -> bytes:
            if sys.platform == "win32":
                with self._seek:
                    os.lseek(self.fd, offset, os.SEEK_SET)
                    return os.read(self.fd, length)
            return os.pread(self.fd, length, offset)

        return _answer(run)

    def write(self, offset: int, data: Buffer) -> int:
        def run() -> int:
            view, at = memoryview(data), offset
            while view:
                if sys.platform == "win32":
                    with self._seek:
                        os.lseek(self.fd, at, os.SEEK_SET)
                        n = os.write(self.fd, view)
                else:
                    n = os.pwrite(self.fd, view, at)
                view, at = view[n:], at + n
            return SFTP_OK

        return _answer(run)

    def stat(self) -> paramiko.SFTPAttributes | int:
        return _answer(lambda: paramiko.SFTPAttributes.from_stat(os.fstat(self.fd)))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        def run() -> int:
            if self.readonly:
                raise _Refused("read-only share")
            _set_attrs(self.fd, attr)
            return SFTP_OK

        return _answer(run)


def _set_attrs(file: int | str, attr: paramiko.SFTPAttributes) -> None:
    """Apply SFTP attributes to ``file``: a descriptor (``O_PATH`` or open), or a checked
    path walking by path. Set-id bits are dropped, an owner change is refused, a symlink is
    left alone."""
    st = os.fstat(file) if isinstance(file, int) else os.lstat(file)
    if _is_link(st):
        raise _Refused("attributes of a symlink")
    if (attr.st_uid is not None and attr.st_uid not in (-1, st.st_uid)) or (
        attr.st_gid is not None and attr.st_gid not in (-1, st.st_gid)
    ):
        raise _Refused("files in a share belong to the host user")
    # Linux: an O_PATH descriptor is changed through its /proc/self/fd name. Elsewhere the
    # descriptor itself is (a size change then needs one open for writing, as sshfs's are).
    target: int | str = file
    if sys.platform == "linux" and isinstance(file, int):
        target = f"/proc/self/fd/{file}"
    if attr.st_mode is not None:
        os.chmod(target, attr.st_mode & _MODE_BITS)
    if attr.st_size is not None:
        os.truncate(target, attr.st_size)
    if attr.st_atime is not None and attr.st_mtime is not None:
        os.utime(target, (attr.st_atime, attr.st_mtime))


def _answer(run: Callable[[], T]) -> T | int:
    """``run()``, with refusals and OS errors turned into SFTP status codes."""
    try:
        return run()
    except _Refused:
        return SFTP_PERMISSION_DENIED
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EPERM):
            # A symlink where a file was asked for (not followed on the host), or not allowed.
            return SFTP_PERMISSION_DENIED
        return paramiko.SFTPServer.convert_errno(e.errno or errno.EIO)
    except NotImplementedError:
        return SFTP_OP_UNSUPPORTED
