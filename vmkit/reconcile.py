"""What killed commands left: intents in the record, compared with what really exists.

A live change writes an ``Intent`` to the VM's record before its first side effect and
removes it in the write that records the result. A command killed in between (``kill -9``,
a closed terminal, a power cut) leaves the intent, and whatever it had made so far: a QEMU
chardev, a ``virtiofsd`` waiting on its socket, a guest mount, a forwarding rule, a session in
the agent. Every such piece is named after its share or forward, so each mechanism finds
them (``leftovers``) and ``remove`` clears them.

``settle`` runs under the VM's lock before every change, at start and in ``vmkit repair``: a
half-made share or forward is removed (the command that wanted it failed; running it again
makes it whole), a half-done removal is finished, and the intents are cleared. A piece that
cannot be removed (a guest mount a container uses) is reported with who holds it; its intent
stays, and the rest is settled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import attrs

from vmkit.errors import VmkitError
from vmkit.guest.ssh import SSHSession
from vmkit.host import procs
from vmkit.mechanisms.base import ForwardMechanism, Leftover, ShareMechanism, release_mount
from vmkit.state import ForwardSpec, Intent, ShareSpec, VMRecord


@attrs.frozen
class Orphan:
    """A leftover, with the intent of the command that made it if the record still has it."""

    leftover: Leftover
    intent: Intent | None = None

    @property
    def under_way(self) -> bool:
        """Its command still runs (another vmkit process, in the middle of the change)."""
        return self.intent is not None and _alive(self.intent.pid)

    def describe(self) -> str:
        """``chardev chr-vmkit-… from an interrupted share of /data``."""
        if self.intent is None:
            origin = "that vmkit's record does not account for"
        elif self.under_way:
            origin = f"of a {self.intent.describe()} under way (pid {self.intent.pid})"
        else:
            origin = f"from an interrupted {self.intent.describe()}"
        return f"{self.leftover.what} ({self.leftover.mechanism}) {origin}"

    def advice(self, vm: str) -> str:
        """The whole line ``vmkit shares``/``forwards``/``status`` print for it."""
        if self.under_way:
            return f"in progress: {self.describe()}"
        again = ""
        if self.intent is not None and self.intent.share is not None:
            again = f"`vmkit {self.intent.op} {self.intent.share.source}` or "
        elif self.intent is not None and self.intent.forward is not None:
            again = f"`vmkit {self.intent.op} {self.intent.forward.host_port}` or "
        return f"orphaned: {self.describe()}; {again}`vmkit repair {vm}` will clean it"


@attrs.frozen
class Settled:
    """What ``settle`` did (one line each) and what it could not do."""

    fixed: list[str] = attrs.Factory(list)
    problems: list[VmkitError] = attrs.Factory(list)
    #: The share or forward whose leftovers stay, with the error (also in ``problems``).
    blocked: list[tuple[ShareSpec | ForwardSpec, VmkitError]] = attrs.Factory(list)


def new_intent(
    op: str, *, share: ShareSpec | None = None, forward: ForwardSpec | None = None
) -> Intent:
    return Intent(op, share=share, forward=forward, pid=os.getpid(), since=time.time())


def same_share(a: ShareSpec, b: ShareSpec) -> bool:
    """The same share as far as its pieces go: one mechanism, and one guest path (or tag)."""
    if a.mechanism != b.mechanism:
        return False
    if a.target and b.target:
        return a.target == b.target
    return bool(a.tag) and a.tag == b.tag


def in_the_way(left: object, new: ShareSpec | ForwardSpec) -> bool:
    """A leftover's spec that takes the guest path, tag or host port ``new`` needs."""
    if isinstance(left, ShareSpec) and isinstance(new, ShareSpec):
        if left.target and left.target == new.target:
            return True
        return bool(left.tag) and left.tag == new.tag and left.tag != "sshfs"
    if isinstance(left, ForwardSpec) and isinstance(new, ForwardSpec):
        return left.key == new.key
    return False


def _removing(record: VMRecord) -> tuple[list[ShareSpec], list[ForwardSpec]]:
    shares = [i.share for i in record.pending if i.op == "unshare" and i.share is not None]
    forwards = [i.forward for i in record.pending if i.op == "unforward" and i.forward]
    return shares, forwards


def _intent_for(record: VMRecord, lo: Leftover) -> Intent | None:
    for i in record.pending:
        if lo.share is not None and i.share is not None and same_share(lo.share, i.share):
            return i
        if lo.forward is not None and i.forward is not None and lo.forward.key == i.forward.key:
            return i
    return None


def find(
    record: VMRecord, smechs: Sequence[ShareMechanism], fmechs: Sequence[ForwardMechanism]
) -> list[Orphan]:
    """Every leftover of every mechanism: pieces no wanted share or forward accounts for
    (a share being removed by an interrupted ``unshare`` is not wanted)."""
    removing_s, removing_f = _removing(record)
    wanted_s = [s for s in record.shares if s not in removing_s]
    wanted_f = [f for f in record.forwards if f not in removing_f]
    found = [lo for m in smechs for lo in m.leftovers(wanted_s)]
    found += [lo for fm in fmechs for lo in fm.leftovers(wanted_f)]
    return [Orphan(lo, _intent_for(record, lo)) for lo in found]


def settle(
    record: VMRecord,
    smechs: Sequence[ShareMechanism],
    fmechs: Sequence[ForwardMechanism],
    ssh: Callable[[], SSHSession],
) -> Settled:
    """Remove every leftover and clear the intents it can; ``record`` is changed in place
    (the caller holds the VM's lock and saves it)."""
    out = Settled()
    by_share: dict[ShareSpec, list[Orphan]] = {}
    by_forward: dict[ForwardSpec, list[Orphan]] = {}
    for o in find(record, smechs, fmechs):
        if o.leftover.share is not None:
            by_share.setdefault(o.leftover.share, []).append(o)
        elif o.leftover.forward is not None:
            by_forward.setdefault(o.leftover.forward, []).append(o)
    stuck: list[Intent] = []
    for spec, orphans in by_share.items():
        mech = next(m for m in smechs if m.name == spec.mechanism)

        def clear_share(spec: ShareSpec = spec, mech: ShareMechanism = mech) -> None:
            if spec.target:
                release_mount(ssh(), spec.target)
            mech.remove(spec)

        _clear(spec, clear_share, orphans, out, stuck)
    for fspec, orphans in by_forward.items():
        fmech = next(m for m in fmechs if m.name == fspec.mechanism)

        def clear_forward(fspec: ForwardSpec = fspec, fmech: ForwardMechanism = fmech) -> None:
            fmech.remove(fspec)

        _clear(fspec, clear_forward, orphans, out, stuck)
    _finish_intents(record, stuck, out)
    return out


def _clear(
    spec: ShareSpec | ForwardSpec,
    remove: Callable[[], None],
    orphans: list[Orphan],
    out: Settled,
    stuck: list[Intent],
) -> None:
    try:
        remove()
    except VmkitError as e:
        out.problems.append(e)
        out.blocked.append((spec, e))
        stuck += [o.intent for o in orphans if o.intent is not None]
        return
    out.fixed.append("removed " + "; ".join(o.describe() for o in orphans))


def settle_offline(record: VMRecord) -> Settled:
    """The VM is stopped and keeps nothing of its live shares and forwards: only the record's
    intents are settled (a removal is finished, a half-made addition forgotten)."""
    out = Settled()
    _finish_intents(record, [], out)
    return out


def _finish_intents(record: VMRecord, stuck: list[Intent], out: Settled) -> None:
    for i in record.pending:
        if i in stuck:
            continue
        if i.op == "unshare" and i.share in record.shares:
            record.shares = [s for s in record.shares if s != i.share]
            out.fixed.append(f"finished the interrupted {i.describe()}")
        elif i.op == "unforward" and i.forward in record.forwards:
            record.forwards = [f for f in record.forwards if f != i.forward]
            out.fixed.append(f"finished the interrupted {i.describe()}")
        elif not any(i.describe() in line for line in out.fixed):
            out.fixed.append(f"an interrupted {i.describe()} had left nothing behind")
    record.pending = [i for i in record.pending if i in stuck]


def _alive(pid: int) -> bool:
    return pid != os.getpid() and procs.alive(pid, "vmkit")
