"""Reading the host's Debian mirror from its apt sources, never a hard-coded host."""

from __future__ import annotations

import pytest
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import load

apt_source = load("modules", "apt_source")

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.test/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.test/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.fixture
def apt_dir(tmp_path, monkeypatch):
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    monkeypatch.setattr(apt_source, "SOURCES_DIR", str(sources))
    monkeypatch.setattr(apt_source, "SOURCES_LIST", str(tmp_path / "sources.list"))
    return tmp_path


def test_mirror_from_deb822_sources(apt_dir):
    (apt_dir / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert apt_source.debian_mirror() == "http://mirror.test/debian"


def test_mirror_from_one_line_sources_list(apt_dir):
    (apt_dir / "sources.list").write_text(
        "deb http://sec.test/debian-security bookworm-security main\n"
        "deb [arch=amd64] http://old.test/debian/ bookworm main\n"
    )
    assert apt_source.debian_mirror() == "http://old.test/debian"


def test_own_source_files_are_skipped(apt_dir):
    (apt_dir / "sources.list.d" / "cabify-consul-bullseye.sources").write_text(
        DEB822.replace("mirror.test", "ours.test")
    )
    (apt_dir / "sources.list.d" / "zz.sources").write_text(DEB822)
    assert apt_source.debian_mirror() == "http://mirror.test/debian"


def test_no_source_is_a_clear_error(apt_dir):
    with pytest.raises(CommandExecutionError, match="no Debian archive found"):
        apt_source.debian_mirror()
