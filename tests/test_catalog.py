"""The box catalog: the shipped file loads, and each rule rejects what it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkit.boxes import catalog
from vmkit.errors import BoxNotFound, VmkitError

GOOD = """
schema = 1
[[box]]
name = "mine/lab"
arch = "amd64"
description = "a lab box"
source = "url"
url = "file:///srv/boxes/lab.json"
providers = ["libvirt"]
checksum = "sha256:{hex}"
"""


def test_shipped_catalog_has_the_promised_entries() -> None:
    entries = catalog.load([catalog.builtin_path()])
    keys = {e.key for e in entries}
    assert ("vmkit-mini", "amd64") in keys
    assert ("vmkit-mini", "i386") in keys
    oommf = catalog.find("virtualmicromagnetics/full", entries=entries)
    assert oommf.source == "vagrant-cloud"
    assert oommf.providers == ("virtualbox",)
    assert any("OOMMF" in c for c in oommf.contents)
    assert "as described by its authors" in oommf.notes
    mini = catalog.find("vmkit-mini", entries=entries)
    assert mini.arch == "amd64"
    assert mini.build.startswith("vmkit box build")


def test_user_catalog_adds_and_replaces(tmp_path: Path) -> None:
    user = tmp_path / "catalog.toml"
    user.write_text(GOOD.format(hex="a" * 64), encoding="utf-8")
    entries = catalog.load([catalog.builtin_path(), user])
    lab = catalog.find("mine/lab", entries=entries)
    assert lab.checksum == "sha256:" + "a" * 64
    assert len([e for e in entries if e.name == "vmkit-mini"]) == 2


def test_user_catalog_from_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMKIT_HOME", str(tmp_path))
    (tmp_path / "catalog.toml").write_text(GOOD.format(hex="b" * 64), encoding="utf-8")
    assert catalog.find("mine/lab").url == "file:///srv/boxes/lab.json"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[[box]]
name = "x"
arch = "sparc"
description = ""
source = "local"
providers = ["hyperv"]
colour = "red"

[[box]]
name = "nocloud"
arch = "amd64"
description = "d"
source = "vagrant-cloud"
providers = ["virtualbox"]
checksum = "md5:123"
""",
        encoding="utf-8",
    )
    with pytest.raises(catalog.CatalogInvalid) as err:
        catalog.load_file(bad)
    text = str(err.value)
    for fragment in [
        "box #1 (x): unknown key(s) colour",
        "arch 'sparc'",
        "`description` is missing",
        "provider 'hyperv'",
        "needs `build`",
        "box #2 (nocloud): a Vagrant Cloud box is named OWNER/NAME",
        "`checksum` must be sha256:",
    ]:
        assert fragment in text
    assert str(bad) in text


def test_duplicate_entry_and_bad_toml(tmp_path: Path) -> None:
    twice = tmp_path / "twice.toml"
    twice.write_text(
        GOOD.format(hex="c" * 64) + GOOD.format(hex="d" * 64).replace("schema = 1", ""),
        encoding="utf-8",
    )
    with pytest.raises(catalog.CatalogInvalid, match="listed already as box #1"):
        catalog.load_file(twice)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[box]\nname=", encoding="utf-8")
    with pytest.raises(catalog.CatalogInvalid, match="not valid TOML"):
        catalog.load_file(broken)
    with pytest.raises(catalog.CatalogInvalid, match="does not exist"):
        catalog.load_file(tmp_path / "missing.toml")
    with pytest.raises(catalog.CatalogInvalid, match="schema 2"):
        catalog.parse({"schema": 2})


def test_find_unknown_box_is_a_clear_error() -> None:
    entries = catalog.load([catalog.builtin_path()])
    with pytest.raises(BoxNotFound, match="no-such-box"):
        catalog.find("no-such-box", entries=entries)
    with pytest.raises(BoxNotFound, match=r"vmkit-mini \(arm64\)"):
        catalog.find("vmkit-mini", "arm64", entries=entries)
    assert issubclass(catalog.CatalogInvalid, VmkitError)
