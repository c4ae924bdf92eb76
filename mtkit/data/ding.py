"""Build the Ding German->English benchmark corpus from Debian's `trans-de-en` package.

Ding (Frank Richter, TU Chemnitz; GPL-2+) is a human-made dictionary whose entries carry example
sentences: sentence pairs become train/dev/test, words and phrases go to train only. Parsing, seeds
and held-out sets are those of the script that built the benchmark copy this project measures on
(kept outside the package), so the files come out byte-identical to it. This module does not
tokenize or load the corpus (sources.py reads the files it writes).
"""

from __future__ import annotations

import io
import logging
import lzma
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from mtkit import extras, files
from mtkit.errors import DataError

log = logging.getLogger("mtkit")

SYSTEM_DICT = Path("/usr/share/trans/de-en")  # where `apt-get install trans-de-en` puts it
DEB_MEMBER = "usr/share/trans/de-en"  # the dictionary's path inside the .deb's data archive
PACKAGE = "trans-de-en"
EVAL_SIZE = 1000  # sentences in each of: reserved (not written), test, dev
SHUFFLE_SEED, TRAIN_SEED = 20171206, 1  # the reference script's seeds: changing them changes the corpus
FILES = ("train.de", "train.en", "dev.de", "dev.en", "test.de", "test.en")
HOW_TO_GET = (
    f"install it with `apt-get install {PACKAGE}` (gives {SYSTEM_DICT}), or download the package"
    f" (`apt-get download {PACKAGE}`, or from packages.debian.org) and pass it with --source"
)

Pair = tuple[str, str]


def build_ding(out_dir: Path, source: Path | None = None, overwrite: bool = False) -> dict[str, int]:
    """Write train/dev/test .de/.en into `out_dir` and return the pair count per split.

    Args:
        out_dir: folder for the six files (created if needed).
        source: the dictionary text file, a `trans-de-en` .deb, or a folder it was unpacked
            into; None = /usr/share/trans/de-en if installed, else `apt-get download`.
        overwrite: replace a different corpus already in `out_dir` (identical files are kept).

    Raises:
        DataError: if no source can be found or read, or `out_dir` holds a different corpus.
    """
    text, origin = _read_source(source)
    sents, phrases = parse_ding(text, origin)
    train, dev, test = split_ding(sents, phrases)
    if not dev or not test:
        raise DataError(
            f"{origin}: only {len(sents)} example sentences; the split needs more than {2 * EVAL_SIZE}"
            " without '/' (is this the full Ding dictionary?)"
        )
    corpus: dict[str, bytes] = {}
    for name, pairs in (("train", train), ("dev", dev), ("test", test)):
        corpus[f"{name}.de"] = "".join(a + "\n" for a, _ in pairs).encode("utf-8")
        corpus[f"{name}.en"] = "".join(b + "\n" for _, b in pairs).encode("utf-8")
    _write_corpus(Path(out_dir), corpus, overwrite)
    counts = {"train": len(train), "dev": len(dev), "test": len(test)}
    log.info("ding: %d sentence and %d phrase pairs from %s -> train %d, dev %d, test %d in %s",
             len(sents), len(phrases), origin, counts["train"], counts["dev"], counts["test"], out_dir)
    return counts


# ----------------------------------------------------------------------------- parsing and splitting


def clean(s: str) -> str:
    """A dictionary phrase without {gender}, [domain], (notes), alternatives after ';' and extra spaces."""
    s = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\([^)]*\)", "", s).split(";")[0]
    return re.sub(r"\s+", " ", s).strip(" ,")


def parse_ding(text: str, origin: str = "ding") -> tuple[list[Pair], list[Pair]]:
    """Dictionary text -> (sentence pairs, phrase pairs), each deduplicated in first-seen order.

    A line is `de1 | de2 :: en1 | en2` (`#` starts a comment line). Aligned parts that both end
    in . ! or ? and have at least 3 German words are sentences (kept verbatim); the others are
    cleaned phrases, dropped if empty or holding "a / b" alternatives or an ellipsis.
    """
    sents: list[Pair] = []
    phrases: list[Pair] = []
    # Universal newlines, as Python's text mode reads them (the reference script uses open()).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for line in lines:
        if line.startswith("#") or "::" not in line:
            continue
        de, en = line.split("::", 1)
        d, e = [s.strip() for s in de.split("|")], [s.strip() for s in en.split("|")]
        if len(d) != len(e):
            continue  # misaligned entry: no way to pair its parts
        for a, b in zip(d, e, strict=True):
            if re.search(r"[.!?]$", a) and re.search(r"[.!?]$", b) and len(a.split()) >= 3:
                sents.append((a, b))
            else:
                a, b = clean(a), clean(b)
                if a and b and "/" not in a + b and "…" not in a + b:
                    phrases.append((a, b))
    if not sents and not phrases:
        raise DataError(f"{origin}: no `German :: English` entries found; is this the Ding dictionary?")
    return list(dict.fromkeys(sents)), list(dict.fromkeys(phrases))


def split_ding(sents: list[Pair], phrases: list[Pair]) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, dev, test) exactly as the reference script makes them.

    Shuffled sentences without "a / b" alternatives (which would skew BLEU) give 1,000 reserved
    for evaluation outside this corpus (never written), then test, then dev. Training takes the
    other sentences and all phrases, minus any pair sharing a side with a held-out sentence.
    """
    sents = list(sents)
    random.Random(SHUFFLE_SEED).shuffle(sents)
    plain = [p for p in sents if "/" not in p[0] + p[1]]
    reserved, test, dev = plain[:EVAL_SIZE], plain[EVAL_SIZE : 2 * EVAL_SIZE], plain[2 * EVAL_SIZE : 3 * EVAL_SIZE]
    held = set(reserved + test + dev)
    rest = [p for p in sents if p not in held]
    seen = {x for a, b in reserved + test + dev for x in (a, b)}
    train = [p for p in rest + phrases if p[0] not in seen and p[1] not in seen]
    random.Random(TRAIN_SEED).shuffle(train)
    return train, dev, test


# ----------------------------------------------------------------------------- finding the source


def _read_source(source: Path | None) -> tuple[str, str]:
    """(dictionary text, where it came from)."""
    if source is not None:
        path = Path(source)
        if not path.exists():
            raise DataError(f"--source: {path.resolve()}: not found; {HOW_TO_GET}")
        if path.is_dir():
            for candidate in (path / DEB_MEMBER, path / "de-en"):
                if candidate.is_file():
                    return _decode(_read_bytes(candidate), candidate), str(candidate.resolve())
            raise DataError(f"--source: {path.resolve()}: a folder without {DEB_MEMBER} or de-en in it")
        data = _read_bytes(path)
        if data.startswith(b"!<arch>\n"):
            return _decode(deb_member(data, path), path), f"{path.resolve()}:{DEB_MEMBER}"
        return _decode(data, path), str(path.resolve())
    if SYSTEM_DICT.is_file():
        return _decode(_read_bytes(SYSTEM_DICT), SYSTEM_DICT), str(SYSTEM_DICT)
    with tempfile.TemporaryDirectory(prefix="mtkit-ding-") as tmp:
        deb = _apt_download(Path(tmp))
        return _decode(deb_member(_read_bytes(deb), deb), deb), f"{deb.name}:{DEB_MEMBER}"


def _apt_download(folder: Path) -> Path:
    """`apt-get download trans-de-en` into `folder` (no root needed); the .deb's path."""
    log.info("ding: no %s; running `apt-get download %s`", SYSTEM_DICT, PACKAGE)
    try:
        done = subprocess.run(["apt-get", "download", PACKAGE], cwd=folder, capture_output=True,
                              text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise DataError(f"ding: cannot run apt-get ({e}); {HOW_TO_GET}") from None
    debs = sorted(folder.glob(f"{PACKAGE}_*.deb"))
    if done.returncode != 0 or not debs:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"ding: `apt-get download {PACKAGE}` failed ({last}); {HOW_TO_GET}")
    return debs[0]


def deb_member(deb: bytes, deb_path: Path, member: str = DEB_MEMBER) -> bytes:
    """One file from a .deb, unpacked in Python: an `ar` archive holding data.tar.{xz,gz,zst,...}."""
    where = f"--source: {Path(deb_path).resolve()}"
    pos = 8  # after the "!<arch>\n" magic
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]  # name[16] mtime[12] uid[6] gid[6] mode[8] size[10] "`\n"
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise DataError(f"{where}: broken .deb (bad ar member header at byte {pos})") from None
        body = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + size % 2  # members are padded to an even length
        if name.startswith("data.tar"):
            return _tar_member(body, name, member, Path(deb_path), where)
    raise DataError(f"{where}: no data.tar member; is this a Debian package?")


def _tar_member(body: bytes, name: str, member: str, deb_path: Path, where: str) -> bytes:
    mode = {".xz": "r:xz", ".gz": "r:gz", ".bz2": "r:bz2", ".zst": "r:zst"}.get(Path(name).suffix, "r:")
    if mode == "r:zst" and sys.version_info < (3, 14):  # tarfile reads zstd only from Python 3.14
        zstandard = extras.zstandard()
        if zstandard is None:
            return _dpkg_extract(deb_path, member, where)
        body, mode = zstandard.ZstdDecompressor().decompressobj().decompress(body), "r:"
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode=mode) as tar:
            for info in tar:
                if info.name.removeprefix("./") == member and (info.isfile() or info.issym() or info.islnk()):
                    f = tar.extractfile(info)
                    if f is not None:
                        return f.read()
    except (tarfile.TarError, lzma.LZMAError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{where}: cannot unpack {name} ({e})") from None
    raise DataError(f"{where}: {name} has no {member}; is this the {PACKAGE} package?")


def _dpkg_extract(deb_path: Path, member: str, where: str) -> bytes:
    """The fallback for zstd-compressed packages without the `zstandard` module."""
    if shutil.which("dpkg-deb") is None or not deb_path.is_file():
        raise DataError(f"{where}: its data is zstd-compressed; `pip install zstandard` or install dpkg")
    with tempfile.TemporaryDirectory(prefix="mtkit-deb-") as tmp:
        done = subprocess.run(["dpkg-deb", "-x", str(deb_path), tmp], capture_output=True, text=True)
        target = Path(tmp) / member
        if done.returncode != 0 or not target.is_file():
            raise DataError(f"{where}: dpkg-deb -x failed ({done.stderr.strip()[:200]})")
        return target.read_bytes()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path.resolve()}: cannot read ({e.strerror})") from None


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{Path(path).resolve()}: line {line}: not valid UTF-8; is this the Ding dictionary?") from None


# ----------------------------------------------------------------------------- writing


def _write_corpus(out_dir: Path, corpus: dict[str, bytes], overwrite: bool) -> None:
    """Write the files together (files.write_all); never silently replace a different corpus."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out: {out_dir.resolve()} is a file, not a folder")
    existing = {n: out_dir / n for n in corpus if (out_dir / n).is_file()}
    differing = [n for n, p in existing.items() if p.read_bytes() != corpus[n]]
    if differing and not overwrite:
        raise DataError(
            f"--out: {out_dir.resolve()}: already holds a different corpus ({', '.join(differing)} differ);"
            " pass --overwrite (overwrite=True) to replace it, or choose another folder"
        )
    todo = {n: data for n, data in corpus.items() if n not in existing or n in differing}
    if not todo:
        log.info("ding: %s already holds this exact corpus; nothing written", out_dir)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    files.write_all({out_dir / n: data for n, data in todo.items()})  # all written before the first is renamed
