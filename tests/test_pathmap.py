import pytest

from vmkit.errors import InvalidInput
from vmkit.guest.pathmap import guest_path


@pytest.mark.parametrize(
    ("host", "guest"),
    [
        ("/home/ann/data", "/home/ann/data"),
        ("/home/ann/data/", "/home/ann/data"),
        ("/home/ann/./a/../data", "/home/ann/data"),
        ("/tmp/with space/and 'quote'", "/tmp/with space/and 'quote'"),
        ("/tmp/$(touch x)/`id`", "/tmp/$(touch x)/`id`"),
        ("/tmp/ünïcødé/数据", "/tmp/ünïcødé/数据"),
        (r"C:\Users\Ann\data", "/c/Users/Ann/data"),
        (r"c:\Users\Ann\data", "/c/Users/Ann/data"),
        ("D:/Projects/sage", "/d/Projects/sage"),
        (r"E:\\", "/e"),
        ("C:", "/c"),
        (r"C:\Users\Ann Lee\My Data (old)", "/c/Users/Ann Lee/My Data (old)"),
        (r"\\server\share\dir", "/unc/server/share/dir"),
        ("//server/share", "/unc/server/share"),
        (r"Z:\données\übung", "/z/données/übung"),
    ],
)
def test_guest_path(host: str, guest: str) -> None:
    assert guest_path(host) == guest


@pytest.mark.parametrize("bad", ["", "relative/path", r"\\server", "a\0b"])
def test_guest_path_rejects(bad: str) -> None:
    with pytest.raises(InvalidInput):
        guest_path(bad)
