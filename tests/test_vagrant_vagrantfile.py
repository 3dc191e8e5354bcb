"""Vagrantfile rendering: Ruby escaping checked by Ruby itself, templates checked by Vagrant.

Needs Debian's ``vagrant`` and ``vagrant-libvirt`` (which bring ``ruby``). ``vagrant validate``
checks only the provider it would use: libvirt is checked for real; the VirtualBox block is
checked with a stand-in ``VBoxManage`` that only reports a version, because VirtualBox is not
installed here and Vagrant refuses to validate for an unusable provider.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vmkit.errors import InvalidInput, NotFound
from vmkit.providers.vagrant import vagrantfile

NASTY = [
    "O'Brien",
    'say "hi"',
    "#{`touch /tmp/pwned`}",
    "back\\slash \\' \\\" end\\",
    "two\nlines\r\tand a tab",
    "bell\x07 nul-free \x1b[31m escape",
    "Zoë Ñúñez 张伟 🙂",
    "%q(x) %{y} __END__",
]


@pytest.mark.parametrize("text", NASTY)
def test_ruby_string_evaluates_back_to_the_same_text(text: str, tmp_path: Path) -> None:
    script = tmp_path / "t.rb"
    script.write_text(
        "# encoding: utf-8\n$stdout.binmode\n$stdout.write("
        + vagrantfile.ruby_string(text)
        + ")\n",
        encoding="utf-8",
    )
    out = subprocess.run(["ruby", str(script)], capture_output=True, check=True, timeout=30)
    assert out.stdout.decode("utf-8") == text
    assert not Path("/tmp/pwned").exists()


def test_ruby_literal_kinds() -> None:
    assert vagrantfile.ruby_literal(True) == "true"
    assert vagrantfile.ruby_literal(None) == "nil"
    assert vagrantfile.ruby_literal(2048) == "2048"
    assert vagrantfile.ruby_literal(["a", 1]) == '["a", 1]'
    assert vagrantfile.ruby_literal({"k": False}) == '{"k" => false}'
    with pytest.raises(TypeError):
        vagrantfile.ruby_literal(object())


def variables(**over: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "machine": "obrien",
        "box": "virtualmicromagnetics/full",
        "box_url": "",
        "description": NASTY[0] + " " + NASTY[2] + " " + NASTY[4],
        "cpus": 2,
        "memory": 2048,
        "ssh_port": 20000,
        "forwards": [{"id": "jupyter", "guest": 8888, "host": 20001}],
        "synced_folders": [{"host": "work dir", "guest": "/home/vagrant/work"}],
        "libvirt_driver": "qemu",
        "ssh_username": "",
        "gui": True,
        "provision_script": "echo 'O\"Brien' #{x}\napt-get -y install oommf",
        "install_docker": False,
    }
    v.update(over)
    return v


def validate(project: Path, provider: str, fake_vbox: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VAGRANT_DEFAULT_PROVIDER=provider, VAGRANT_CWD=str(project))
    if provider == "virtualbox":
        env["PATH"] = f"{fake_vbox}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["vagrant", "validate"], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def fake_vbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("vbox")
    exe = d / "VBoxManage"
    exe.write_text("#!/bin/sh\necho 7.0.14r161095\n", encoding="utf-8")
    exe.chmod(0o755)
    return d


@pytest.mark.parametrize("template", ["docker-host", "oommf", "course-lab"])
@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
def test_every_shipped_template_passes_vagrant_validate(
    template: str, provider: str, tmp_path: Path, fake_vbox: Path
) -> None:
    assert template in vagrantfile.shipped_templates()
    (tmp_path / "work dir").mkdir()
    text = vagrantfile.render(template, variables(install_docker=True))
    (tmp_path / "Vagrantfile").write_text(text, encoding="utf-8")
    done = validate(tmp_path, provider, fake_vbox)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout
    assert 'host_ip: "127.0.0.1"' in text
    assert 'lv.driver = "qemu"' in text


def test_validate_catches_a_broken_template(tmp_path: Path, fake_vbox: Path) -> None:
    # The check above must be able to fail: an unknown libvirt option is refused.
    custom = tmp_path / "bad.Vagrantfile.j2"
    custom.write_text(
        'Vagrant.configure("2") do |config|\n'
        "  config.vm.box = {{ box }}\n"
        '  config.vm.provider "libvirt" do |lv|\n    lv.no_such_option = 1\n  end\nend\n',
        encoding="utf-8",
    )
    project = tmp_path / "p"
    project.mkdir()
    (project / "Vagrantfile").write_text(vagrantfile.render(custom, {"box": "b"}), encoding="utf-8")
    done = validate(project, "libvirt", fake_vbox)
    assert done.returncode != 0
    assert "no_such_option" in done.stdout + done.stderr


def test_missing_variable_names_it() -> None:
    v = variables()
    del v["memory"]
    with pytest.raises(InvalidInput, match="'memory' is undefined"):
        vagrantfile.render("course-lab", v)


def test_custom_template_can_include_shipped_parts(tmp_path: Path) -> None:
    custom = tmp_path / "mine.Vagrantfile.j2"
    custom.write_text(
        'Vagrant.configure("2") do |config|\n  config.vm.define {{ machine }} do |m|\n'
        '{% include "_machine.j2" %}\n  end\nend\n',
        encoding="utf-8",
    )
    text = vagrantfile.render(custom, variables())
    assert 'm.vm.box = "virtualmicromagnetics/full"' in text
    with pytest.raises(NotFound, match="no Vagrantfile template named 'nope'"):
        vagrantfile.render("nope", variables())
    with pytest.raises(NotFound, match="does not exist"):
        vagrantfile.render(tmp_path / "missing.j2", variables())


def test_machine_names() -> None:
    assert vagrantfile.validate_name("lab-01") == "lab-01"
    for bad in ["", "-lab", "lab-", "Lab", "a/b", "a{b}", "a.b", "x" * 64]:
        with pytest.raises(InvalidInput):
            vagrantfile.validate_name(bad)
