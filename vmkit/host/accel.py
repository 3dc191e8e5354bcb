"""Which accelerator QEMU boots a VM with, and the proof that a hardware one really works.

A virtual CPU that starts proves little: a paravirtual KVM (``kvm_pvm``) starts one and then
never runs a stock kernel, so the VM hangs with an empty console. A hardware accelerator
(KVM, HVF, WHPX) therefore counts as working only once QEMU has booted the box's own kernel
with it to its first console line: a few seconds, no disk. Verdicts are kept in the cache
folder, keyed by the QEMU binary and its version, the kernel and the accelerator, so later
boots pay nothing; ``vmkit doctor --recheck`` forgets them. The boot watchdog (in ``vmkit.vm``)
records what it sees the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
from pathlib import Path

import attrs

from vmkit import home
from vmkit.errors import InvalidInput
from vmkit.host import arch, runner

#: The QEMU that runs vmkit's x86 boxes (amd64 and i386 alike).
QEMU_BINARY = "qemu-system-x86_64"
#: What ``--accel`` / ``$VMKIT_ACCEL`` accept.
CHOICES = ("auto", "kvm", "hvf", "whpx", "tcg")
ENV = "VMKIT_ACCEL"
#: The hardware accelerator QEMU has on each host system.
HARDWARE = {"Linux": "kvm", "Darwin": "hvf", "Windows": "whpx"}
#: A kernel prints within a second with a working accelerator; silence this long means it
#: never ran. Under TCG the first line comes later, but still within ~2 s on a quiet host.
PROOF_TIMEOUT = 10.0
#: The kernel proper (not only its real-mode setup code) has run once it prints its banner.
KERNEL_STARTED = re.compile(rb"Linux version ")

_CACHE_FILE = "accel-proofs.json"


def requested(value: str | None = None, *, system: str | None = None) -> str:
    """The accelerator asked for: ``value``, else ``$VMKIT_ACCEL``, else ``"auto"``.

    ``InvalidInput`` for an unknown name or one this host system does not have (``hvf`` on
    Linux): that is a user's mistake, said before anything starts.
    """
    source = "--accel" if value else f"${ENV}"
    raw = value or os.environ.get(ENV) or "auto"
    accel = raw.strip().lower()
    if accel not in CHOICES:
        raise InvalidInput(
            f"{source} {raw!r} is not an accelerator", hint=f"use one of: {', '.join(CHOICES)}"
        )
    system = system or platform.system()
    if accel not in ("auto", "tcg") and HARDWARE.get(system) != accel:
        here = ["auto", "tcg", *([HARDWARE[system]] if system in HARDWARE else [])]
        raise InvalidInput(
            f"{source} {accel}: QEMU has no {accel} accelerator on {system}",
            hint=f"on this host use one of: {', '.join(here)}",
        )
    return accel


def parse_accel_help(text: str) -> frozenset[str] | None:
    """The accelerators in ``qemu-system-* -accel help`` output, or None if it is not that.

    QEMU prints a header line, "Accelerators supported in QEMU binary:", then one name per
    line (e.g. ``tcg`` and ``kvm`` on Linux, ``hvf`` on macOS, ``whpx`` on Windows builds).
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].lower().startswith("accelerators supported"):
        return None
    return frozenset(line.lower() for line in lines[1:] if re.fullmatch(r"[a-z0-9_-]+", line, re.I))


def display(accel: str) -> str:
    """How an accelerator is named in messages."""
    return "software emulation (TCG)" if accel == "tcg" else accel.upper()


@attrs.frozen
class Verdict:
    """Whether ``accel`` booted the kernel, in plain words, and whether it came from the cache."""

    accel: str
    ok: bool
    detail: str
    cached: bool = False


def silent_detail(accel: str, seconds: float, last_words: str = "") -> str:
    """The plain-words finding for a kernel that never printed its banner."""
    if not last_words:
        return (
            f"{display(accel)} is present but could not run this VM's kernel: "
            f"the console stayed empty for {seconds:.0f} s"
        )
    return (
        f"{display(accel)} is present but could not run this VM's kernel: no kernel banner on "
        f"the console in {seconds:.0f} s, only {last_words!r} (printed before the kernel proper)"
    )


def _arm(binary: str) -> bool:
    return Path(binary).name.removesuffix(".exe").endswith("aarch64")


def bare_qemu(binary: str, accel: str, memory_mib: int) -> list[str]:
    """QEMU with ``accel`` and the CPU model a real boot uses, and no devices at all."""
    cpu = ["-cpu", "max"] if accel == "tcg" else [] if accel == "whpx" else ["-cpu", "host"]
    return [
        binary,
        "-accel",
        accel,
        "-machine",
        "virt" if _arm(binary) else "pc",
        *cpu,
        "-m",
        str(memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ]


def boot_argv(binary: str, accel: str, kernel: Path) -> list[str]:
    """QEMU booting ``kernel`` alone, its console on stdout: enough to see it run."""
    return [
        *bare_qemu(binary, accel, 256),
        "-kernel",
        str(kernel),
        # No root disk: the kernel prints, then panics, and -no-reboot makes QEMU exit.
        "-append",
        # The Arm virt machine's UART is a PL011 (ttyAMA0), a PC's a 16550 (ttyS0).
        "console=ttyAMA0 panic=-1"
        if _arm(binary)
        else "earlyprintk=serial,ttyS0,115200 console=ttyS0 panic=-1",
        "-serial",
        "stdio",
        "-no-reboot",
    ]


def prove(
    accel: str, kernel: Path, *, binary: str, timeout: float = PROOF_TIMEOUT, recheck: bool = False
) -> Verdict:
    """Boot ``kernel`` with ``accel`` to its first console line (or say why it did not).

    A cached verdict is returned unless ``recheck``. Never raises for what it finds; a
    missing QEMU is a ``ToolMissing``.
    """
    key = _key(binary, accel, kernel)
    if not recheck:
        known = _load().get(key)
        if known is not None:
            return Verdict(accel, bool(known["ok"]), str(known["detail"]), cached=True)
    out = runner.watch(boot_argv(binary, accel, kernel), until=KERNEL_STARTED, timeout=timeout)
    if out.matched:
        verdict = Verdict(
            accel,
            True,
            f"{display(accel)} booted the box's kernel to its first console line "
            f"in {out.seconds:.1f} s",
        )
    elif out.exit_code is None:
        last = _last_line(out.output.decode(errors="replace"))
        verdict = Verdict(accel, False, silent_detail(accel, out.seconds, last))
    else:
        error = _last_line(out.stderr) or f"QEMU exited with {out.exit_code}"
        verdict = Verdict(accel, False, f"QEMU could not start with {display(accel)}: {error}")
    _store(key, verdict)
    return verdict


def record(accel: str, kernel: Path, *, binary: str, ok: bool, detail: str) -> None:
    """Keep what a real boot showed (the watchdog's finding) as this host's verdict."""
    _store(_key(binary, accel, kernel), Verdict(accel, ok, detail))


def forget() -> None:
    """Drop every cached verdict, so the next boot proves the accelerator again."""
    with contextlib.suppress(FileNotFoundError):
        (home.cache_dir() / _CACHE_FILE).unlink()


def _key(binary: str, accel: str, kernel: Path) -> str:
    exe = Path(runner.which(binary)).resolve()
    version = arch.qemu_version_text(binary) or "?"
    st_exe, st_kernel = exe.stat(), kernel.stat()
    parts = [
        str(exe),
        str(st_exe.st_size),
        str(st_exe.st_mtime_ns),
        version,
        str(kernel.resolve()),
        str(st_kernel.st_size),
        str(st_kernel.st_mtime_ns),
        accel,
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _load() -> dict[str, dict[str, object]]:
    try:
        data = json.loads((home.cache_dir() / _CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(key: str, verdict: Verdict) -> None:
    path = home.cache_dir() / _CACHE_FILE
    data = _load()
    data[key] = {"accel": verdict.accel, "ok": verdict.ok, "detail": verdict.detail}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
