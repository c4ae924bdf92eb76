"""ding.py on a small hand-made dictionary in the Ding format, and on .deb packages built here."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import subprocess
import tarfile

import pytest

from mtkit.data import ding
from mtkit.data.ding import build_ding, clean, deb_member
from mtkit.errors import DataError

SENTENCES = 3300  # > 3 * 1000 plain sentences, so reserved, test and dev are all full

# The other entries, one per kind of rule (expected phrase pairs in the comments).
SPECIAL = [
    "# Version :: test 2024-01-01",  # a comment, although it has "::"
    "Haus {n} [arch.] (Gebäude); Gebäude {n} | Häuser {pl} :: house (building); building | houses",  # 2 pairs
    "Haus {n} [arch.] (Gebäude); Gebäude {n} | Häuser {pl} :: house (building); building | houses",  # dup
    "Weg {m} / Pfad {m} :: way / path",  # dropped: "a / b" alternatives
    "und so weiter … :: and so on …",  # dropped: ellipsis
    "nur links | zwei :: only left",  # dropped: parts not aligned
    "Wir gehen / fahren nach Hause. :: We walk / drive home.",  # a sentence with "/": train only
    "Kurz. :: Short.",  # ends in "." but under 3 words: a phrase, kept as ("Kurz.", "Short.")
    "{n} :: [coll.]",  # dropped: empty after cleaning
    "Apfel {m}, :: apple ,",  # ("Apfel", "apple")
    "a line without the separator",
]


def ding_text() -> str:
    lines = [SPECIAL[0]]
    for i in range(SENTENCES):
        lines.append(f"Satz {{m}} | Das ist Satz Nummer {i}. :: sentence | This is sentence number {i}.")
        if i == 10:
            lines.extend(SPECIAL[1:])
    # Universal newlines as Python's text mode reads them: "\r\n" and a lone "\r" end lines too.
    return "\n".join(lines) + "\nBaum {m} :: tree\r\nHund {m} :: dog\rKatze {f} :: cat\n"


# sha256 of each file as make_ding.py writes them for ding_text() (checked against it by hand).
EXPECTED_SHA256 = {
    "train.de": "582287163f3c4c286a1d3818e3501f072024aceca23f4b58c3a0816e5bc258e3",
    "train.en": "8559f901bb59a8e7266f9fa34c999087603e4924ea41f105bde913a8159ef5f4",
    "dev.de": "d4c073690096c3e669cb4aec43a85d8cadf558dd1b546b9c7444f31949d2abb6",
    "dev.en": "064ea6c67b1693041fbb697dc8be3a746a0f49973ca32e0858934fd3ca7ffe0a",
    "test.de": "ce154483e7cbf6fdf24ff9c1a70c3bcb77e57e4b43524eaaf3be4e2f03d9b7e0",
    "test.en": "a9760d88db6801e472599ba993ff34f6a9d6b90249b07de92646f80da49267bb",
}


def lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def dict_file(tmp_path):
    path = tmp_path / "de-en"
    path.write_bytes(ding_text().encode("utf-8"))
    return path


def test_clean_removes_annotations():
    assert clean("Haus {n} [arch.] (Gebäude); Gebäude {n}") == "Haus"
    assert clean("  Apfel {m}, ") == "Apfel"
    assert clean("{n}") == ""


def test_split_counts_and_lines(tmp_path, dict_file):
    counts = build_ding(tmp_path / "out", source=dict_file)
    # train: 300 numbered sentences left + the "/" sentence + 8 phrases
    assert counts == {"train": SENTENCES - 3000 + 1 + 8, "dev": 1000, "test": 1000}
    out = tmp_path / "out"
    for split, n in counts.items():
        assert len(lines(out / f"{split}.de")) == len(lines(out / f"{split}.en")) == n
    train = dict(zip(lines(out / "train.de"), lines(out / "train.en"), strict=True))
    for de, en in [("Satz", "sentence"), ("Haus", "house"), ("Häuser", "houses"), ("Kurz.", "Short."),
                   ("Apfel", "apple"), ("Baum", "tree"), ("Hund", "dog"), ("Katze", "cat"),
                   ("Wir gehen / fahren nach Hause.", "We walk / drive home.")]:
        assert train.pop(de) == en
    assert len(train) == SENTENCES - 3000  # the rest are numbered sentences
    held = set()
    for split in ("dev", "test"):
        for de, en in zip(lines(out / f"{split}.de"), lines(out / f"{split}.en"), strict=True):
            number = de.removeprefix("Das ist Satz Nummer ").removesuffix(".")
            assert en == f"This is sentence number {number}."
            held.add(de)
    assert len(held) == 2000 and not held & set(lines(out / "train.de"))
    got = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in EXPECTED_SHA256}
    assert got == EXPECTED_SHA256


def test_rebuild_identical_refuse_different_and_overwrite(tmp_path, dict_file, caplog):
    out = tmp_path / "out"
    build_ding(out, source=dict_file)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with caplog.at_level(logging.INFO, logger="mtkit"):
        build_ding(out, source=dict_file)
    assert "already holds this exact corpus" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing rewritten

    (out / "dev.en").write_text("changed\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{out}: already holds a different corpus \(dev.en differ\).*--overwrite"):
        build_ding(out, source=dict_file)
    build_ding(out, source=dict_file, overwrite=True)
    assert len(lines(out / "dev.en")) == 1000
    assert sorted(p.name for p in out.iterdir()) == sorted(ding.FILES)  # no temp files left


def tar_bytes(files: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ar_archive(members: list[tuple[str, bytes]]) -> bytes:
    """The `ar` format of .deb files: magic, then per member a 60-byte header and even-padded data."""
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode("ascii")
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def make_deb(data_member: str, compression: str, path: str = "./usr/share/trans/de-en", body: bytes = b"") -> bytes:
    """A minimal .deb: debian-binary, control.tar.gz and data.tar.<compression>."""
    data = tar_bytes({"./usr/share/doc/x": b"doc", path: body}, f"w:{compression}")
    control = tar_bytes({"./control": b"Package: trans-de-en\n"}, "w:gz")
    return ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", control), (data_member, data)])


@pytest.mark.parametrize("member,compression", [("data.tar.xz", "xz"), ("data.tar.gz", "gz")])
def test_deb_source_is_unpacked_in_python(tmp_path, dict_file, member, compression):
    deb = tmp_path / "trans-de-en_1.0_all.deb"
    deb.write_bytes(make_deb(member, compression, body=dict_file.read_bytes()))
    assert deb_member(deb.read_bytes(), deb) == dict_file.read_bytes()
    build_ding(tmp_path / "from-deb", source=deb)
    build_ding(tmp_path / "from-text", source=dict_file)
    for name in ding.FILES:
        assert (tmp_path / "from-deb" / name).read_bytes() == (tmp_path / "from-text" / name).read_bytes()


def test_unpacked_folder_is_a_source(tmp_path, dict_file):
    target = tmp_path / "x" / "usr" / "share" / "trans"
    target.mkdir(parents=True)
    (target / "de-en").write_bytes(dict_file.read_bytes())
    assert build_ding(tmp_path / "out", source=tmp_path / "x")["dev"] == 1000


def test_broken_debs(tmp_path):
    deb = tmp_path / "x.deb"
    deb.write_bytes(make_deb("data.tar.gz", "gz", path="./usr/share/other"))
    with pytest.raises(DataError, match="data.tar.gz has no usr/share/trans/de-en"):
        build_ding(tmp_path / "out", source=deb)
    deb.write_bytes(b"!<arch>\n")
    with pytest.raises(DataError, match="no data.tar member"):
        build_ding(tmp_path / "out", source=deb)
    deb.write_bytes(make_deb("data.tar.xz", "gz"))  # named .xz, holds gzip
    with pytest.raises(DataError, match="cannot unpack data.tar.xz"):
        build_ding(tmp_path / "out", source=deb)


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match=rf"--source: {tmp_path / 'nope'}: not found; install it with `apt-get"):
        build_ding(tmp_path / "out", source=tmp_path / "nope")
    (tmp_path / "latin1").write_bytes("Käse :: cheese\n".encode("latin-1"))
    with pytest.raises(DataError, match="line 1: not valid UTF-8"):
        build_ding(tmp_path / "out", source=tmp_path / "latin1")
    (tmp_path / "small").write_text("Das ist ein Satz. :: This is a sentence.\nKäse :: cheese\n", encoding="utf-8")
    with pytest.raises(DataError, match="only 1 example sentences"):
        build_ding(tmp_path / "out", source=tmp_path / "small")
    (tmp_path / "other").write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(DataError, match="no `German :: English` entries"):
        build_ding(tmp_path / "out", source=tmp_path / "other")


@pytest.mark.slow
def test_no_source_anywhere_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(ding, "SYSTEM_DICT", tmp_path / "not-installed")
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get: nothing can reach the network
    with pytest.raises(DataError, match=r"apt-get install trans-de-en.*--source"):
        build_ding(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("zstd") and shutil.which("dpkg-deb")), reason="needs zstd and dpkg-deb")
def test_zstd_deb_falls_back_to_dpkg_deb(tmp_path, dict_file):
    data = tar_bytes({"./usr/share/trans/de-en": dict_file.read_bytes()}, "w")
    zst = subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    control = tar_bytes({"./control": b"Package: trans-de-en\n"}, "w:gz")
    deb = tmp_path / "z.deb"
    deb.write_bytes(ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.zst", zst)]))
    assert build_ding(tmp_path / "out", source=deb)["test"] == 1000
