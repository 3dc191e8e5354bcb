"""Package a built vmkit box (vmkit-mini) as a Vagrant box, plus versioned box metadata.

libvirt (boots): ``box.img`` (qcow2) + ``metadata.json`` + ``Vagrantfile`` + the box's kernel
and initrd. vmkit-mini's disk is one ext4 filesystem with no bootloader, so the box's
Vagrantfile boots it with vagrant-libvirt's direct kernel boot (``libvirt.kernel``,
``libvirt.initrd``, ``libvirt.cmd_line``), the files found beside that Vagrantfile through
``File.dirname(__FILE__)``.

VirtualBox: ``box.ovf`` + a stream-optimized VMDK + ``metadata.json`` + ``Vagrantfile``.
VirtualBox boots only through a bootloader on the disk, so the VMDK holds the BIOS-bootable
layout of ``vmkit.boxes.bootdisk`` (SYSLINUX, kernel and initrd on a FAT partition, then the root).

SSH: Vagrant logs in with its well-known insecure key and replaces it at the first ``up``.
vmkit-mini's user is ``vmkit`` with no key baked in, so packaging writes Vagrant's public
insecure key into ``/home/vmkit/.ssh/authorized_keys`` of a *copy* of the disk (``debugfs``
on a raw copy: no mount, no root, no second disk). Without a seed disk the guest makes its own
SSH host keys at first boot (``ssh-keygen -A``), so machines of one box do not share them.

``vagrant box add vmkit-mini.json`` then adds the box from the versioned metadata file
(``file://`` URL and sha256), without network and without the "No version detected" warning.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

import attrs

from vmkit.errors import BoxError, InvalidInput, ToolMissing
from vmkit.host.runner import run, which
from vmkit.progress import Progress, no_progress
from vmkit.providers.vagrant.vagrantfile import ruby_string
from vmkit.streams import sha256_file

if TYPE_CHECKING:
    from vmkit.boxes import Box

PROVIDERS = ("libvirt", "virtualbox")

#: Where Debian's vagrant package keeps the insecure public key.
INSECURE_KEY_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
    "/usr/share/vagrant/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/*/gems/vagrant-*/keys/vagrant.pub",
)

GUEST_USER = "vmkit"
_CONVERT_TIMEOUT = 900.0


@attrs.frozen
class PackagedBox:
    """A box file made by ``package`` and the metadata JSON that points at it."""

    box_name: str
    version: str
    provider: str
    path: Path
    metadata_path: Path
    sha256: str
    size: int
    seconds: float
    boots: bool


def vagrant_box_name(name: str, arch: str) -> str:
    """The name the box gets in Vagrant: ``vmkit-mini``, ``vmkit-mini-i386``."""
    return name if arch == "amd64" else f"{name}-{arch}"


def box_version(box: Box) -> str:
    """A version Vagrant can order, from the recipe version and build time: ``1.20261124.65914``."""
    built = str(box.manifest.get("built_at", ""))
    m = re.match(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})", built)
    recipe = int(box.manifest.get("recipe_version", 0))
    if m is None:
        return f"{recipe}.0.0"
    return f"{recipe}.{m.group(1)}{m.group(2)}{m.group(3)}.{int(''.join(m.group(4, 5, 6)))}"


def find_insecure_key() -> Path:
    """Vagrant's public insecure key, as shipped with the installed vagrant."""
    for pattern in INSECURE_KEY_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[-1])
    raise ToolMissing(
        "vagrant's insecure public key (keys/vagrant.pub)",
        package="vagrant",
        hint="install Vagrant (Debian: `apt-get install vagrant`) or pass insecure_key=PATH",
    )


def package(
    name: str = "vmkit-mini",
    *,
    arch: str = "amd64",
    provider: str = "libvirt",
    output: Path,
    insecure_key: Path | None = None,
    libvirt_driver: str | None = None,
    progress: Progress = no_progress,
) -> PackagedBox:
    """Package the built box ``name``/``arch`` for ``provider`` into the box file ``output``.

    Also writes ``<box name>.json`` beside ``output``: the versioned metadata for
    ``vagrant box add`` (a box of the other provider packaged into the same folder is added
    to the same file).
    ``libvirt_driver`` (``"qemu"`` or ``"kvm"``) is written into the box's Vagrantfile when
    given; otherwise vagrant-libvirt's default (kvm) applies unless the project sets it.
    """
    from vmkit import boxes

    if provider not in PROVIDERS:
        raise InvalidInput(
            f"cannot package for provider {provider!r}", hint="use libvirt or virtualbox"
        )
    if libvirt_driver not in (None, "qemu", "kvm"):
        raise InvalidInput(f"libvirt driver {libvirt_driver!r} is not qemu or kvm")
    started = time.monotonic()
    box = boxes.find(name, arch)
    key = (insecure_key or find_insecure_key()).read_text(encoding="utf-8").strip()
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    box_name = vagrant_box_name(name, arch)
    version = box_version(box)
    with tempfile.TemporaryDirectory(prefix=".vmkit-package-", dir=output.parent) as tmp:
        work = Path(tmp)
        raw = work / "root.raw"
        progress("copying the disk")
        _qemu_img(["convert", "-O", "raw", str(box.disk), str(raw)])
        progress("adding Vagrant's insecure key for the first login")
        inject_authorized_key(raw, GUEST_USER, key)
        content = work / "box"
        content.mkdir()
        if provider == "libvirt":
            progress("writing box.img")
            _libvirt_box(box, raw, content, libvirt_driver)
        else:
            progress("writing the VMDK and OVF")
            _virtualbox_box(box, box_name, raw, content)
        raw.unlink()
        (content / "info.json").write_text(
            json.dumps(
                {
                    "name": box_name,
                    "version": version,
                    "description": str(box.manifest.get("description", "")),
                    "built_by": "vmkit box package",
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        progress(f"writing {output.name}")
        partial = work / "box.tar"
        with tarfile.open(partial, "w") as tar:
            for item in sorted(content.iterdir()):
                tar.add(item, arcname=item.name)
        digest = sha256_file(partial)
        partial.replace(output)
    # One metadata file per box name and folder: the libvirt and VirtualBox boxes share it.
    meta_path = output.parent / f"{box_name}.json"
    write_metadata(meta_path, box_name, version, provider, output, digest, box.manifest)
    return PackagedBox(
        box_name=box_name,
        version=version,
        provider=provider,
        path=output,
        metadata_path=meta_path,
        sha256=digest,
        size=output.stat().st_size,
        seconds=time.monotonic() - started,
        boots=True,
    )


def write_metadata(
    path: Path,
    box_name: str,
    version: str,
    provider: str,
    box_file: Path,
    sha256: str,
    manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write Vagrant's versioned box metadata for one box file; returns it.

    An existing metadata file for the same box keeps its other versions and providers, so the
    libvirt and VirtualBox boxes of one version can share it.
    """
    data: dict[str, Any] = {"name": box_name, "versions": []}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old, dict) and old.get("name") == box_name:
                data = old
        except ValueError:
            pass
    data["description"] = str((manifest or {}).get("description", "")) or data.get(
        "description", ""
    )
    versions: list[dict[str, Any]] = data.setdefault("versions", [])
    entry = next((v for v in versions if v.get("version") == version), None)
    if entry is None:
        entry = {"version": version, "providers": []}
        versions.append(entry)
    entry["providers"] = [p for p in entry.get("providers", []) if p.get("name") != provider]
    entry["providers"].append(
        {
            "name": provider,
            "url": box_file.resolve().as_uri(),
            "checksum_type": "sha256",
            "checksum": sha256,
        }
    )
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return data


# -- the disk --------------------------------------------------------------------------------


def inject_authorized_key(raw: Path, user: str, public_key: str) -> None:
    """Make ``public_key`` the only line of ``~user/.ssh/authorized_keys`` in the ext4 image ``raw``."""
    debugfs = which("debugfs", package="e2fsprogs")
    passwd = _debugfs_cat(debugfs, raw, "/etc/passwd")
    entry = next(
        (line.split(":") for line in passwd.splitlines() if line.startswith(f"{user}:")), None
    )
    if entry is None or len(entry) < 6:
        raise BoxError(f"the box has no user {user!r} in /etc/passwd")
    uid, gid, home = entry[2], entry[3], entry[5]
    ssh_dir = f"{home}/.ssh"
    keys = f"{ssh_dir}/authorized_keys"
    with tempfile.TemporaryDirectory(prefix="vmkit-key-") as tmp:
        # debugfs splits its command lines on spaces: the local file gets a plain name, cwd=tmp.
        (Path(tmp) / "authorized_keys").write_text(public_key + "\n", encoding="utf-8")
        commands = [
            f"mkdir {ssh_dir}",
            f"rm {keys}",
            f"write authorized_keys {keys}",
            f"set_inode_field {ssh_dir} uid {uid}",
            f"set_inode_field {ssh_dir} gid {gid}",
            f"set_inode_field {ssh_dir} mode 040700",
            f"set_inode_field {keys} uid {uid}",
            f"set_inode_field {keys} gid {gid}",
            f"set_inode_field {keys} mode 0100600",
        ]
        (Path(tmp) / "cmds").write_text("\n".join(commands) + "\n", encoding="utf-8")
        run([debugfs, "-w", "-f", "cmds", str(raw.resolve())], cwd=tmp, timeout=120)
    # debugfs reports failed commands on stderr but exits 0: check the result instead.
    if _debugfs_cat(debugfs, raw, keys).strip() != public_key:
        raise BoxError(f"could not write {keys} into the box's disk")
    stat = run([debugfs, "-R", f"stat {keys}", str(raw)], timeout=60).stdout
    if not re.search(rf"User:\s+{uid}\s+Group:\s+{gid}", stat) or "Mode:  0600" not in stat:
        raise BoxError(f"{keys} in the box's disk has the wrong owner or mode")
    e2fsck = which("e2fsck", package="e2fsprogs")
    # Exit 1 means "errors corrected"; anything above is a damaged filesystem.
    checked = run([e2fsck, "-f", "-y", str(raw)], timeout=300, check=False)
    if checked.exit_code > 1:
        raise BoxError(
            f"the box's filesystem is damaged after writing the key: {checked.stdout[-300:]}"
        )


def _debugfs_cat(debugfs: str, raw: Path, path: str) -> str:
    return run([debugfs, "-R", f"cat {path}", str(raw)], timeout=60).stdout


def _qemu_img(args: list[str]) -> str:
    return run([which("qemu-img"), *args], timeout=_CONVERT_TIMEOUT).stdout


def _virtual_size(image: Path) -> int:
    info = json.loads(_qemu_img(["info", "--output=json", str(image)]))
    return int(info["virtual-size"])


# -- libvirt ---------------------------------------------------------------------------------


def _libvirt_box(box: Box, raw: Path, content: Path, driver: str | None) -> None:
    compression = str(box.manifest.get("disk_compression", "zlib"))
    _qemu_img(
        [
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            f"compression_type={compression}",
            str(raw),
            str(content / "box.img"),
        ]
    )
    shutil.copyfile(box.kernel, content / "vmlinuz")
    shutil.copyfile(box.initrd, content / "initrd.img")
    gib = -(-_virtual_size(content / "box.img") // (1 << 30))
    (content / "metadata.json").write_text(
        json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": gib}) + "\n",
        encoding="utf-8",
    )
    (content / "Vagrantfile").write_text(
        libvirt_box_vagrantfile(box.cmdline, driver), encoding="utf-8"
    )


def libvirt_box_vagrantfile(cmdline: str, driver: str | None = None) -> str:
    """The Vagrantfile inside the libvirt box: user, direct kernel boot, no /vagrant."""
    driver_line = f"    libvirt.driver = {ruby_string(driver)}\n" if driver else ""
    return (
        "# Made by `vmkit box package`. vmkit-mini has no bootloader: libvirt boots the kernel\n"
        "# and initrd that sit beside this file.\n"
        'Vagrant.configure("2") do |config|\n'
        f"  config.ssh.username = {ruby_string(GUEST_USER)}\n"
        "  # /vagrant would need rsync in the guest; vmkit shares folders live instead.\n"
        '  config.vm.synced_folder ".", "/vagrant", disabled: true\n'
        "  config.vm.provider :libvirt do |libvirt|\n"
        "    here = File.dirname(__FILE__)\n"
        '    libvirt.kernel = File.join(here, "vmlinuz")\n'
        '    libvirt.initrd = File.join(here, "initrd.img")\n'
        f"    libvirt.cmd_line = {ruby_string(cmdline)}\n"
        f"{driver_line}"
        "  end\n"
        "end\n"
    )


# -- VirtualBox ------------------------------------------------------------------------------


def _virtualbox_box(box: Box, box_name: str, raw: Path, content: Path) -> None:
    from vmkit.boxes.bootdisk import assemble

    # VirtualBox boots from the MBR: SYSLINUX, the kernel and the initrd go on the disk.
    bios = assemble(raw, box.kernel, box.initrd, box.cmdline, raw.with_name("bios.raw"))
    vmdk = content / "box-disk001.vmdk"
    _qemu_img(["convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(bios), str(vmdk)])
    capacity = _virtual_size(bios)
    bios.unlink()
    # Vagrant gives the NAT card this MAC at import (config.vm.base_mac).
    mac = "080027" + uuid.uuid4().hex[:6].upper()
    ovf = virtualbox_ovf(
        box_name,
        disk_file=vmdk.name,
        disk_file_size=vmdk.stat().st_size,
        capacity=capacity,
        description=str(box.manifest.get("description", "")),
    )
    (content / "box.ovf").write_text(ovf, encoding="utf-8")
    (content / "metadata.json").write_text(
        json.dumps({"provider": "virtualbox"}) + "\n", encoding="utf-8"
    )
    (content / "Vagrantfile").write_text(
        "# Made by `vmkit box package`: vmkit-mini for VirtualBox (SYSLINUX on the disk).\n"
        'Vagrant.configure("2") do |config|\n'
        f"  config.vm.base_mac = {ruby_string(mac)}\n"
        f"  config.ssh.username = {ruby_string(GUEST_USER)}\n"
        '  config.vm.synced_folder ".", "/vagrant", disabled: true\n'
        "end\n",
        encoding="utf-8",
    )


def virtualbox_ovf(
    name: str, *, disk_file: str, disk_file_size: int, capacity: int, description: str
) -> str:
    """A minimal OVF 1.0 envelope: 1 CPU, 1 GiB, one SATA disk, one NAT network card."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href={quoteattr(disk_file)} ovf:size="{disk_file_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks</Info>
    <Network ovf:name="NAT">
      <Description>NAT network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id={quoteattr(name)}>
    <Info>A virtual machine</Info>
    <AnnotationSection>
      <Info>Description</Info>
      <Annotation>{escape(description)}</Annotation>
    </AnnotationSection>
    <OperatingSystemSection ovf:id="96">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian_64</Description>
      <vbox:OSType ovf:required="false">Debian_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{escape(name)}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>1 virtual CPU</rasd:Caption>
        <rasd:ElementName>1 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>1024 MB of memory</rasd:Caption>
        <rasd:ElementName>1024 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>sataController0</rasd:Caption>
        <rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection>
        <rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceSubType>virtio</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:Caption>disk1</rasd:Caption>
        <rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""
