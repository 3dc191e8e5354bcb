"""The public API is pinned: a change to it is a decision, not an accident."""

import vmkit
from vmkit import errors


def test_public_names() -> None:
    assert sorted(vmkit.__all__) == sorted(
        [
            "VM",
            "ForwardSpec",
            "Result",
            "ShareSpec",
            "Status",
            "VMState",
            "VmkitError",
            "attach",
            "create",
            "get",
            "list_vms",
            "open",
            "resolve",
            "up",
        ]
    )
    for name in vmkit.__all__:
        assert getattr(vmkit, name) is not None


def test_every_error_is_a_vmkit_error_with_a_hintable_message() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, errors.VmkitError) for c in classes)
    e = errors.VMNotFound("no VM named 'x'")
    assert str(e) == "no VM named 'x' (see `vmkit list` for the VMs that exist)"


def test_open_checks_the_provider(vmkit_home) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from vmkit import state
    from vmkit.state import VMRecord

    state.new_folder("a")
    state.save(VMRecord(name="a", provider="qemu"))
    assert vmkit.open("qemu:a").name == "a"
    assert vmkit.open("a").name == "a"
    with pytest.raises(errors.InvalidInput):
        vmkit.open("virtualbox:a")


class _Mech:
    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.error = error

    def check(self) -> None:
        if self.error:
            raise self.error


def test_mechanism_choice_says_why_it_passed_one_over() -> None:
    from vmkit.state import VMRecord
    from vmkit.vm import VM

    vm = VM(VMRecord(name="x", provider="qemu"))
    said: list[str] = []
    best = _Mech("virtiofs", errors.GuestModuleMissing("the guest has no virtiofs module"))
    chosen = vm._pick([best, _Mech("sshfs")], None, "share", said.append)
    assert chosen.name == "sshfs"
    assert said == [
        "virtiofs cannot be used (the guest has no virtiofs module); trying the next share mechanism"
    ]
    import pytest

    with pytest.raises(errors.NotSupported, match="no share mechanism works"):
        vm._pick([best], None, "share")
    with pytest.raises(errors.GuestModuleMissing):
        vm._pick([best, _Mech("sshfs")], "virtiofs", "share")
