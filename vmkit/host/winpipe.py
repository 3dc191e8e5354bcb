"""Windows named pipes as transport streams (vmkit/host/transport.py), through pywin32.

Windows only: the whole module is guarded by ``sys.platform == "win32"``, so type checks for
other platforms see nothing of it. Pipes are byte-mode, overlapped (a pump reads and writes
one handle from two threads at once, which synchronous pipe handles serialize into a
deadlock), local only (``PIPE_REJECT_REMOTE_CLIENTS``), and their security descriptor lets
only the current user connect. A pipe has no half-close: ``shutdown_write`` does nothing and
the stream ends when either side closes it.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":
    import threading

    import _win32typing
    import ntsecuritycon
    import pywintypes
    import win32api
    import win32con
    import win32event
    import win32file
    import win32pipe
    import win32security
    import winerror

    from vmkit.errors import ProviderError

    _BUFFER = 65536
    _ENDED = (winerror.ERROR_BROKEN_PIPE, winerror.ERROR_PIPE_NOT_CONNECTED, winerror.ERROR_NO_DATA)

    def _current_user_only() -> _win32typing.PySECURITY_ATTRIBUTES:
        """Security attributes granting the pipe to the current user and no one else."""
        token = win32security.OpenProcessToken(win32api.GetCurrentProcess(), win32con.TOKEN_QUERY)
        user = win32security.GetTokenInformation(token, win32security.TokenUser)[0]
        dacl = win32security.ACL()
        dacl.AddAccessAllowedAce(win32security.ACL_REVISION, ntsecuritycon.GENERIC_ALL, user)
        sd = win32security.SECURITY_DESCRIPTOR()
        sd.SetSecurityDescriptorDacl(1, dacl, 0)
        sa = win32security.SECURITY_ATTRIBUTES()
        sa.SECURITY_DESCRIPTOR = sd
        return sa

    def _wait(handle: int, ov: _win32typing.PyOVERLAPPED, timeout: float | None) -> int:
        """Bytes moved by the overlapped operation ``ov``; ``TimeoutError`` after ``timeout``."""
        ms = win32event.INFINITE if timeout is None else int(timeout * 1000)
        if win32event.WaitForSingleObject(ov.hEvent, ms) == win32event.WAIT_TIMEOUT:
            win32file.CancelIo(handle)
            raise TimeoutError("timed out")
        return int(win32file.GetOverlappedResult(handle, ov, True))

    def _overlapped() -> _win32typing.PyOVERLAPPED:
        ov = pywintypes.OVERLAPPED()
        ov.hEvent = win32event.CreateEvent(None, True, False, None)
        return ov

    class PipeStream:
        """One end of a connected pipe."""

        def __init__(self, handle: int) -> None:
            self.handle = handle
            self.timeout: float | None = None
            self._closed = threading.Event()

        def recv(self, n: int) -> bytes:
            ov = _overlapped()
            buf = win32file.AllocateReadBuffer(n)
            try:
                win32file.ReadFile(self.handle, buf, ov)
                got = _wait(self.handle, ov, self.timeout)
            except pywintypes.error as e:
                if e.winerror in _ENDED:
                    return b""
                raise OSError(e.winerror, e.strerror) from e
            return bytes(buf[:got])

        def sendall(self, data: bytes) -> None:
            view = memoryview(data)
            while view:
                ov = _overlapped()
                try:
                    win32file.WriteFile(self.handle, bytes(view), ov)
                    sent = _wait(self.handle, ov, self.timeout)
                except pywintypes.error as e:
                    raise OSError(e.winerror, e.strerror) from e
                view = view[sent:]

        def shutdown_write(self) -> None:
            """Pipes have no half-close; the stream ends when a side closes."""

        def settimeout(self, timeout: float | None) -> None:
            self.timeout = timeout

        def close(self) -> None:
            if not self._closed.is_set():
                self._closed.set()
                win32file.CloseHandle(self.handle)

    class PipeListener:
        """A pipe name served by a new pipe instance per client."""

        def __init__(self, name: str) -> None:
            self.name = name
            self._first = True
            self._pending: tuple[int, _win32typing.PyOVERLAPPED] | None = None

        def _instance(self) -> int:
            mode = win32pipe.PIPE_ACCESS_DUPLEX | win32file.FILE_FLAG_OVERLAPPED
            if self._first:
                # Fails if another process serves this name already: no one can sit in front.
                mode |= win32pipe.FILE_FLAG_FIRST_PIPE_INSTANCE
            try:
                handle = win32pipe.CreateNamedPipe(
                    self.name,
                    mode,
                    win32pipe.PIPE_TYPE_BYTE
                    | win32pipe.PIPE_READMODE_BYTE
                    | win32pipe.PIPE_WAIT
                    | win32pipe.PIPE_REJECT_REMOTE_CLIENTS,
                    win32pipe.PIPE_UNLIMITED_INSTANCES,
                    _BUFFER,
                    _BUFFER,
                    0,
                    _current_user_only(),
                )
            except pywintypes.error as e:
                raise ProviderError(f"cannot listen on {self.name}: {e.strerror}") from e
            self._first = False
            return int(handle)

        def accept(self, timeout: float) -> PipeStream | None:
            if self._pending is None:
                handle = self._instance()
                ov = _overlapped()
                try:
                    rc = win32pipe.ConnectNamedPipe(handle, ov)
                except pywintypes.error as e:
                    if e.winerror != winerror.ERROR_PIPE_CONNECTED:
                        win32file.CloseHandle(handle)
                        raise OSError(e.winerror, e.strerror) from e
                    return PipeStream(handle)
                if rc == winerror.ERROR_PIPE_CONNECTED:
                    return PipeStream(handle)
                self._pending = (handle, ov)
            handle, ov = self._pending
            ms = int(timeout * 1000)
            if win32event.WaitForSingleObject(ov.hEvent, ms) == win32event.WAIT_TIMEOUT:
                return None  # the instance stays pending for the next call
            self._pending = None
            return PipeStream(handle)

        def close(self) -> None:
            if self._pending is not None:
                win32file.CloseHandle(self._pending[0])
                self._pending = None

    def connect(name: str, timeout: float) -> PipeStream:
        """A stream to the pipe ``name``; ``ProviderError`` if nothing serves it."""
        try:
            win32pipe.WaitNamedPipe(name, int(timeout * 1000))
            handle = win32file.CreateFile(
                name,
                win32file.GENERIC_READ | win32file.GENERIC_WRITE,
                0,
                None,
                win32file.OPEN_EXISTING,
                win32file.FILE_FLAG_OVERLAPPED,
                None,
            )
        except pywintypes.error as e:
            raise ProviderError(f"nothing answers on {name}: {e.strerror}") from e
        return PipeStream(int(handle))
