"""Pure parsers for VBoxManage output, each tested on recorded real output.

They are deliberately tolerant: unknown keys are kept, lines without ``=`` (7.0's
``Encryption:     disabled``, 6.0's `` rec_screen0``, warnings such as "WARNING: The vboxdrv
kernel module is not loaded") are skipped, Windows line endings are accepted, values may be
quoted or not, and no key has to come before another. The one thing the format itself ties to
order is which card a ``Forwarding(N)`` rule belongs to: VBoxManage prints each NAT card's
rules inside that card's block (``natnetN``, ``macaddressN``, ``nicN``, ... then
``Forwarding(0..)``, numbered from 0 again for every card), so a rule belongs to the card whose
numbered key came last before it. From 6.1 on VBoxManage escapes ``"`` and ``\\`` in
quoted values; older releases print them raw, so only those two escapes are undone and any other
backslash (a Windows path) is kept as it is.
"""

from __future__ import annotations

import re

import attrs


@attrs.frozen
class NatRule:
    """One ``Forwarding(N)`` rule of a NAT network card."""

    nic: int
    name: str
    proto: str
    host_ip: str
    host_port: int
    guest_ip: str
    guest_port: int


@attrs.frozen
class SharedFolder:
    """One shared folder: permanent (machine mapping) or transient (only while running)."""

    name: str
    path: str
    transient: bool


@attrs.frozen
class VMInfo:
    """What ``showvminfo --machinereadable`` says about one VM."""

    name: str
    uuid: str
    state: str  # VirtualBox's word: running, poweroff, saved, paused, aborted, ...
    ostype: str  # the description, e.g. "Debian (64-bit)"
    memory: int | None
    cpus: int | None
    nics: dict[int, str]  # NIC number -> attachment ("nat", "hostonly", ...); "none" ones left out
    rules: tuple[NatRule, ...]
    folders: tuple[SharedFolder, ...]
    session: str
    raw: dict[str, str]

    @property
    def inaccessible(self) -> bool:
        """VirtualBox cannot read the VM's settings file (it prints ``name="<inaccessible>"``)."""
        return self.name == INACCESSIBLE

    @property
    def nat_nics(self) -> list[int]:
        """The numbers of the cards attached to NAT (the only ones with port-forwarding rules)."""
        return sorted(n for n, kind in self.nics.items() if kind == "nat")

    @property
    def running(self) -> bool:
        """True while a VM process holds the machine (paused VMs included, as VirtualBox counts them)."""
        return self.state in ("running", "paused")

    def rules_of(self, nic: int) -> list[NatRule]:
        return [r for r in self.rules if r.nic == nic]


def _unescape(text: str) -> str:
    return re.sub(r'\\([\\"])', r"\1", text)


def _parse_line(line: str) -> tuple[str, str] | None:
    """One ``key=value`` line, or None for lines that carry no pair."""
    if line.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"=(.*)$', line)
        if not m:
            return None
        key, rest = _unescape(m.group(1)), m.group(2)
    else:
        key, eq, rest = line.partition("=")
        if not eq or not key or key != key.strip():
            return None
    if len(rest) >= 2 and rest.startswith('"') and rest.endswith('"'):
        return key, _unescape(rest[1:-1])
    # Unquoted numbers, `<not set>`, and oddities such as `VideoMode="720,400,0"@0,0 1`.
    return key, rest


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """All ``key=value`` pairs of machine-readable output, in order (keys can repeat)."""
    pairs = []
    for raw in text.splitlines():
        pair = _parse_line(raw.rstrip("\r"))
        if pair is not None:
            pairs.append(pair)
    return pairs


def parse_rule(nic: int, value: str) -> NatRule | None:
    """``name,proto,hostip,hostport,guestip,guestport``; None if it is not one."""
    # Split from the right: the five last fields never hold a comma, a rule name might.
    parts = value.rsplit(",", 5)
    if len(parts) != 6:
        return None
    name, proto, host_ip, host_port, guest_ip, guest_port = parts
    try:
        return NatRule(nic, name, proto.lower(), host_ip, int(host_port), guest_ip, int(guest_port))
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


_FOLDER = re.compile(r"SharedFolderName(Machine|Transient)Mapping(\d+)$")
_NIC = re.compile(r"nic(\d+)$")
#: Keys of one network card's block, numbered with the card (``natnet1``, ``macaddress1``, ...).
_NIC_KEY = re.compile(
    r"(?:nic|nictype|nicspeed|natnet|macaddress|cableconnected|hostonlyadapter|"
    r"hostonly-network|bridgeadapter|intnet|nat-network|nicgenericdrv|nictrace|nictracefile)(\d+)$"
)
#: What ``list vms`` and ``showvminfo`` print for a VM whose settings VirtualBox cannot read.
INACCESSIBLE = "<inaccessible>"


def parse_showvminfo(text: str) -> VMInfo:
    """Parse ``VBoxManage showvminfo VM --machinereadable``."""
    raw: dict[str, str] = {}
    nics: dict[int, str] = {}
    rules: list[NatRule] = []
    folders: list[SharedFolder] = []
    current_nic = 1
    for key, value in parse_pairs(text):
        raw.setdefault(key, value)
        block = _NIC_KEY.match(key)
        if block:
            # Forwarding(N) lines come inside their card's block and restart at 0 for each card.
            current_nic = int(block.group(1))
        m = _NIC.match(key)
        if m:
            if value != "none":
                nics[int(m.group(1))] = value
        elif key.startswith("Forwarding("):
            rule = parse_rule(current_nic, value)
            if rule is not None:
                rules.append(rule)
    for key, value in raw.items():
        m = _FOLDER.match(key)
        if m:
            kind, idx = m.groups()
            path = raw.get(f"SharedFolderPath{kind}Mapping{idx}", "")
            folders.append(SharedFolder(value, path, kind == "Transient"))
    return VMInfo(
        name=raw.get("name", ""),
        uuid=raw.get("UUID", ""),
        state=raw.get("VMState", "").lower(),
        ostype=raw.get("ostype", ""),
        memory=_int(raw.get("memory")),
        cpus=_int(raw.get("cpus")),
        nics=nics,
        rules=tuple(rules),
        folders=tuple(folders),
        session=raw.get("SessionName", ""),
        raw=raw,
    )


_LIST_LINE = re.compile(r'^"(.*)" \{([0-9a-fA-F-]{36})\}\s*$')


def parse_list_vms(text: str) -> list[tuple[str, str]]:
    """``(name, uuid)`` of each line of ``list vms`` / ``list runningvms``.

    Names are printed raw between quotes, so a name with quotes in it still ends at the
    last ``" {``. Lines that do not look like entries (warnings) are skipped. A VM whose
    settings VirtualBox cannot read is listed as ``("<inaccessible>", uuid)``.
    """
    out = []
    for raw in text.splitlines():
        m = _LIST_LINE.match(raw.rstrip("\r"))
        if m:
            out.append((m.group(1), m.group(2).lower()))
    return out


def parse_guestproperty(text: str) -> str | None:
    """The value of ``guestproperty get``, or None for ``No value set!``."""
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("Value: "):
            return line[len("Value: ") :]
        if line.strip() == "No value set!":
            return None
    return None


@attrs.frozen(order=True)
class VBoxVersion:
    """A VirtualBox release, e.g. ``7.0.14r161095`` or ``6.1.50_Debianr161033``."""

    major: int
    minor: int
    patch: int
    revision: int = 0
    raw: str = attrs.field(default="", eq=False, order=False)

    @property
    def series(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


_VERSION = re.compile(r"^\s*(\d+)\.(\d+)\.(\d+)(?:[A-Za-z0-9_.~+-]*?r(\d+))?\S*\s*$")


def parse_version(text: str) -> VBoxVersion | None:
    """The version in ``VBoxManage --version`` output; None if there is none.

    On Linux the output can start with warnings (e.g. "WARNING: The vboxdrv kernel module is
    not loaded"), so the last line that looks like a version wins.
    """
    found = None
    for raw in text.splitlines():
        m = _VERSION.match(raw.rstrip("\r"))
        if m:
            major, minor, patch, rev = m.groups()
            found = VBoxVersion(int(major), int(minor), int(patch), int(rev or 0), raw.strip())
    return found
