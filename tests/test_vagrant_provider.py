"""The Vagrant provider against a stand-in ``vagrant`` that replays recorded output.

The stand-in is a real program on PATH, so these tests exercise vmkit.host.runner, the command
prefix, the environment handling, streaming progress and the timeout kill for real.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from vmkit.errors import CommandTimeout, InvalidInput, NotFound, VMNotRunning
from vmkit.guest.ssh import SSHSession
from vmkit.providers.base import VMState
from vmkit.providers.vagrant import VagrantProvider, attach_record, errors, parse_url
from vmkit.state import VMRecord

FAKE = textwrap.dedent(
    """\
    #!PYTHON
    import json, os, sys, time
    scenario = json.load(open(os.environ["FAKE_VAGRANT_SCENARIO"]))
    argv = sys.argv[1:]
    with open(os.environ["FAKE_VAGRANT_LOG"], "a") as log:
        log.write(json.dumps({"argv": argv, "cwd_env": os.environ.get("VAGRANT_CWD"),
                              "home": os.environ.get("HOME"), "marker": os.environ.get("MARKER"),
                              "default": os.environ.get("VAGRANT_DEFAULT_PROVIDER"),
                              "pid": os.getpid()}) + "\\n")
    key = " ".join(a for a in argv if a != "--machine-readable")
    step = scenario.get(key) or scenario.get(argv[0]) or {"code": 0}
    for line in step.get("lines", []):
        print(line, flush=True)
        time.sleep(step.get("gap", 0))
    time.sleep(step.get("sleep", 0))
    sys.stdout.write(step.get("stdout", ""))
    sys.stderr.write(step.get("stderr", ""))
    sys.exit(step.get("code", 0))
    """
).replace("PYTHON", sys.executable)

RUNNING = "1,lab,provider-name,libvirt\n1,lab,state,running\n1,lab,state-human-short,running\n"
SHUTOFF = "1,lab,provider-name,libvirt\n1,lab,state,shutoff\n1,lab,state-human-short,shutoff\n"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyBlob0123456789abcdefABCDEF"


class Fake:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        bindir = tmp / "bin"
        bindir.mkdir()
        exe = bindir / "vagrant"
        exe.write_text(FAKE, encoding="utf-8")
        exe.chmod(0o755)
        self.scenario = tmp / "scenario.json"
        self.log = tmp / "calls.jsonl"
        self.project = tmp / "my lab"
        self.project.mkdir()
        (self.project / "Vagrantfile").write_text("# stand-in\n", encoding="utf-8")
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_VAGRANT_SCENARIO", str(self.scenario))
        monkeypatch.setenv("FAKE_VAGRANT_LOG", str(self.log))
        self.set({})

    def set(self, scenario: dict[str, Any]) -> None:
        self.scenario.write_text(json.dumps(scenario), encoding="utf-8")

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(x) for x in self.log.read_text(encoding="utf-8").splitlines()]

    def record(self, **extra: Any) -> VMRecord:
        return VMRecord(
            name="lab",
            provider="vagrant",
            extra={"project_dir": str(self.project), "machine": "lab", **extra},
        )


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    return Fake(tmp_path, monkeypatch)


def test_status_reads_vagrant_and_keeps_environment(fake: Fake) -> None:
    fake.set({"status": {"stdout": SHUTOFF}})
    status = VagrantProvider(env={"MARKER": "m1"}).status(fake.record())
    assert status.state is VMState.STOPPED
    assert status.detail == "shutoff (libvirt)"
    (call,) = fake.calls()
    assert call["argv"] == ["status", "--machine-readable", "lab"]
    assert call["cwd_env"] == str(fake.project)
    # env= adds to the environment; python-vagrant would have dropped HOME here.
    assert call["home"] == os.environ["HOME"]
    assert call["marker"] == "m1"


def test_start_streams_progress_and_passes_provider(fake: Fake) -> None:
    fake.set(
        {
            "up": {
                "lines": [
                    "1,lab,ui,info,==> lab: Creating domain with the following settings...",
                    "plain text on stderr-ish output",
                    "2,lab,ui,info,==> lab: Waiting for SSH to become available...",
                ],
                "gap": 0.4,
            }
        }
    )
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    VagrantProvider().start(
        fake.record(vagrant_provider="libvirt"),
        lambda line: seen.append((time.monotonic() - started, line)),
    )
    assert [s for _, s in seen] == [
        "==> lab: Creating domain with the following settings...",
        "==> lab: Waiting for SSH to become available...",
    ]
    # Progress arrives while vagrant runs, not all at the end.
    assert seen[0][0] < seen[1][0] - 0.2
    (call,) = fake.calls()
    assert call["argv"] == ["up", "lab", "--provider", "libvirt", "--machine-readable"]
    assert call["default"] == "libvirt"


def test_failure_carries_vagrants_stderr(fake: Fake) -> None:
    fake.set({"destroy": {"code": 1, "stderr": "libvirt: Domain not found\n", "stdout": ""}})
    with pytest.raises(errors.VagrantFailed) as err:
        VagrantProvider().destroy(fake.record())
    assert "libvirt: Domain not found" in str(err.value)
    assert err.value.stderr == "libvirt: Domain not found"
    assert "`vagrant destroy` failed in" in str(err.value)


def test_halt_overrunning_its_timeout_is_killed_then_forced(fake: Fake) -> None:
    fake.set({"halt lab": {"sleep": 60}, "halt --force lab": {"code": 0}})
    started = time.monotonic()
    VagrantProvider().stop(fake.record(), timeout=1.5)
    assert time.monotonic() - started < 15
    calls = fake.calls()
    assert [c["argv"] for c in calls] == [
        ["halt", "lab", "--machine-readable"],
        ["halt", "--force", "lab", "--machine-readable"],
    ]
    with pytest.raises(ProcessLookupError):
        os.kill(calls[0]["pid"], 0)


def test_up_timeout_is_a_command_timeout(fake: Fake) -> None:
    fake.set({"up": {"sleep": 60}})
    with pytest.raises(CommandTimeout, match="did not finish within 1 s"):
        VagrantProvider(up_timeout=1).start(fake.record(), lambda _: None)
    with pytest.raises(ProcessLookupError):
        os.kill(fake.calls()[0]["pid"], 0)


def test_command_prefix_goes_in_front(fake: Fake) -> None:
    fake.set({"status": {"stdout": RUNNING}})
    provider = VagrantProvider(command_prefix=["env", "MARKER=from-prefix"])
    assert provider.status(fake.record()).state is VMState.RUNNING
    assert fake.calls()[0]["marker"] == "from-prefix"


def test_adopt_pins_the_host_key_read_through_vagrant_ssh(fake: Fake) -> None:
    key_dir = fake.project / ".vagrant" / "machines" / "lab" / "libvirt"
    key_dir.mkdir(parents=True)
    (key_dir / "box_meta").write_text('{"name": "vmkit-mini", "version": "0"}', encoding="utf-8")
    fake.set(
        {
            "status": {"stdout": RUNNING},
            "ssh-config lab": {
                "stdout": f'Host lab\n  HostName 192.168.121.9\n  User vmkit\n  Port 22\n  IdentityFile "{key_dir}/private_key"\n'
            },
            "ssh": {
                "stdout": KEY + " root@lab\n",
                "stderr": "Connection to 192.168.121.9 closed.\n",
            },
        }
    )
    found = VagrantProvider().adopt(fake.project)
    assert found.machine == "lab"
    assert found.box == "vmkit-mini"
    assert found.ssh is not None
    assert (found.ssh.host, found.ssh.port, found.ssh.user) == ("192.168.121.9", 22, "vmkit")
    assert found.ssh.key_file == f"{key_dir}/private_key"
    assert found.ssh.host_key == KEY
    ssh_call = next(c for c in fake.calls() if c["argv"][0] == "ssh")
    assert ssh_call["argv"] == ["ssh", "lab", "-c", "cat /etc/ssh/ssh_host_ed25519_key.pub"]
    record = found.to_record("lab")
    assert record.provider == "vagrant"
    assert record.extra == {
        "project_dir": str(fake.project),
        "machine": "lab",
        "vagrant_provider": "libvirt",
    }


def test_adopt_refuses_what_it_cannot_pin(fake: Fake, tmp_path: Path) -> None:
    fake.set({"status": {"stdout": SHUTOFF}})
    with pytest.raises(VMNotRunning, match="is shutoff"):
        VagrantProvider().adopt(fake.project)
    fake.set({"status": {"stdout": RUNNING + RUNNING.replace("lab", "db")}})
    with pytest.raises(InvalidInput, match="defines 2 machines: lab, db"):
        VagrantProvider().adopt(fake.project)
    with pytest.raises(NotFound, match="no machine 'web'"):
        VagrantProvider().adopt(fake.project, "web")
    with pytest.raises(NotFound, match="has no Vagrantfile"):
        VagrantProvider().adopt(tmp_path / "nowhere")


def test_record_without_project_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match="no Vagrant project"):
        VagrantProvider().status(VMRecord(name="x", provider="vagrant"))


def test_live_shares_and_forwards_go_over_ssh(fake: Fake) -> None:
    provider = VagrantProvider()
    record = fake.record()

    def no_ssh() -> SSHSession:
        raise AssertionError("building a mechanism must not connect")

    (share,) = provider.share_mechanisms(record, no_ssh)
    (forward,) = provider.forward_mechanisms(record, no_ssh)
    assert share.name == provider.capabilities.share_mechanisms[0] == "sshfs"
    assert forward.name == provider.capabilities.forward_mechanisms[0] == "ssh-tunnel"


def test_attach_urls(tmp_path: Path, fake: Fake) -> None:
    assert parse_url("vagrant:./mylab") == (Path("mylab"), None)
    assert parse_url("vagrant:/srv/lab:web") == (Path("/srv/lab"), "web")
    odd = tmp_path / "a:b"
    odd.mkdir()
    assert parse_url(f"vagrant:{odd}") == (odd, None)
    with pytest.raises(InvalidInput):
        parse_url("ssh://x")
    fake.set(
        {
            "status": {"stdout": RUNNING},
            "ssh-config lab": {
                "stdout": "Host lab\n  HostName h\n  User u\n  Port 2222\n  IdentityFile /k\n"
            },
            "ssh": {"stdout": KEY + "\n"},
        }
    )
    record = attach_record(f"vagrant:{fake.project}:lab", "mylab")
    assert (record.name, record.ssh.port if record.ssh else 0) == ("mylab", 2222)
