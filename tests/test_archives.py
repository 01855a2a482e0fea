"""Safe extraction: real zip and tar archives built in a temporary folder."""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from emotion_classifier import archives
from emotion_classifier.cli import PipelineError

CONTENT = {
    "dataset/train/happy/a.jpg": b"happy image a",
    "dataset/train/sad/b.jpg": b"sad image b" * 100,
    "dataset/labels.csv": b"filename,label\ntrain/happy/a.jpg,happy\n",
}


def make_zip(path: Path, content: dict[str, bytes] = CONTENT) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return path


def make_tar(path: Path, mode: str = "w", content: dict[str, bytes] = CONTENT) -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in content.items():
            add_tar_entry(archive, name, data)
    return path


def add_tar_entry(archive: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
                  linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = 1_700_000_000
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def tree_contents(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != archives.MARKER_NAME
    }


def assert_nothing_extracted(destination: Path) -> None:
    assert not destination.exists()
    leftovers = [path.name for path in destination.parent.iterdir() if path.name.startswith(f".{destination.name}.")]
    assert leftovers == []


@pytest.mark.parametrize(
    "name, builder",
    [
        ("data.zip", make_zip),
        ("data.tar", lambda path: make_tar(path, "w")),
        ("data.tar.gz", lambda path: make_tar(path, "w:gz")),
        ("data.tgz", lambda path: make_tar(path, "w:gz")),
        ("data.tar.bz2", lambda path: make_tar(path, "w:bz2")),
        ("data.tar.xz", lambda path: make_tar(path, "w:xz")),
    ],
)
def test_extracts_every_format_with_marker(tmp_path, name, builder):
    archive = builder(tmp_path / name)
    destination = tmp_path / "out" / "data"
    assert archives.extract_archive(archive, destination) == destination
    assert tree_contents(destination) == CONTENT
    marker = archives.files.read_json(destination / archives.MARKER_NAME)
    assert marker["archives"][0]["name"] == name
    assert marker["archives"][0]["size"] == archive.stat().st_size
    assert marker["archives"][0]["md5"] == archives.files.file_digest(archive)
    assert marker["files"] == len(CONTENT)
    assert archives.archive_set_name([archive]) == "data"


def test_split_zip_pieces_are_extracted_as_one_archive(tmp_path):
    whole = make_zip(tmp_path / "whole.zip").read_bytes()
    pieces_folder = tmp_path / "pieces"
    pieces_folder.mkdir()
    piece_size = len(whole) // 3 + 1
    for index in range(3):
        (pieces_folder / f"AffectNet.zip.{index + 1:03d}").write_bytes(whole[index * piece_size:(index + 1) * piece_size])
    (pieces_folder / "notes.txt").write_text("not an archive")
    (pieces_folder / "fer.tar.gz").write_bytes(b"")
    sets = archives.find_archive_sets(sorted(pieces_folder.iterdir(), reverse=True))
    assert [[path.name for path in archive_set] for archive_set in sets] == [
        ["AffectNet.zip.001", "AffectNet.zip.002", "AffectNet.zip.003"],
        ["fer.tar.gz"],
    ]
    assert archives.archive_set_name(sets[0]) == "AffectNet"
    destination = tmp_path / "extracted" / "AffectNet"
    archives.extract_archive(sets[0], destination)
    assert tree_contents(destination) == CONTENT
    assert len(archives.files.read_json(destination / archives.MARKER_NAME)["archives"]) == 3


def test_split_zip_with_a_missing_piece_is_refused(tmp_path):
    whole = make_zip(tmp_path / "whole.zip").read_bytes()
    half = len(whole) // 2
    first = tmp_path / "X.zip.001"
    third = tmp_path / "X.zip.003"
    first.write_bytes(whole[:half])
    third.write_bytes(whole[half:])
    with pytest.raises(PipelineError, match=r"missing"):
        archives.extract_archive([first, third], tmp_path / "X")
    assert_nothing_extracted(tmp_path / "X")


def test_rar_volumes_are_grouped(tmp_path):
    names = ["Set.part2.rar", "Set.part1.rar", "Old.rar", "Old.r00", "Old.r01", "single.rar", ".hidden.zip"]
    sets = archives.find_archive_sets([tmp_path / name for name in names])
    assert [[path.name for path in archive_set] for archive_set in sets] == [
        ["Old.rar", "Old.r00", "Old.r01"],
        ["Set.part1.rar", "Set.part2.rar"],
        ["single.rar"],
    ]


def zip_with_entry(path: Path, info: zipfile.ZipInfo, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("good/first.jpg", b"fine")
        archive.writestr(info, data)
    return path


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "entry, data, reason",
    [
        (zipfile.ZipInfo("good/../../evil.jpg"), b"x", "'..'"),
        (zipfile.ZipInfo("/tmp/evil.jpg"), b"x", "absolute path"),
        (zipfile.ZipInfo("..\\evil.jpg"), b"x", "'..'"),
        (symlink_info("good/link"), b"../../outside", "points outside"),
        (symlink_info("good/abs_link"), b"/etc/passwd", "absolute"),
    ],
)
def test_unsafe_zip_entries_are_refused(tmp_path, entry, data, reason):
    archive = zip_with_entry(tmp_path / "bad.zip", entry, data)
    destination = tmp_path / "out" / "bad"
    with pytest.raises(archives.UnsafeArchiveError, match=reason) as caught:
        archives.extract_archive(archive, destination)
    assert "bad.zip" in str(caught.value) and repr(entry.filename) in str(caught.value)
    assert_nothing_extracted(destination)
    assert not (tmp_path / "evil.jpg").exists()


@pytest.mark.parametrize(
    "name, kind, linkname, reason",
    [
        ("../evil.txt", tarfile.REGTYPE, "", "'..'"),
        ("/abs/evil.txt", tarfile.REGTYPE, "", "absolute path"),
        ("sub/link", tarfile.SYMTYPE, "../../outside.txt", "points outside"),
        ("sub/hard", tarfile.LNKTYPE, "../outside.txt", "hard link"),
        ("sub/hard_abs", tarfile.LNKTYPE, "/etc/passwd", "hard link to an absolute path"),
        ("sub/fifo", tarfile.FIFOTYPE, "", "fifo"),
        ("sub/device", tarfile.CHRTYPE, "", "device"),
    ],
)
def test_unsafe_tar_entries_are_refused_before_writing(tmp_path, name, kind, linkname, reason):
    archive_path = tmp_path / "bad.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        add_tar_entry(archive, "sub/ok.jpg", b"written first if we were careless")
        add_tar_entry(archive, name, b"evil" if kind == tarfile.REGTYPE else b"", kind, linkname)
    destination = tmp_path / "out" / "bad"
    with pytest.raises(archives.UnsafeArchiveError, match=reason) as caught:
        archives.extract_archive(archive_path, destination)
    assert "bad.tar.gz" in str(caught.value) and repr(name) in str(caught.value)
    assert_nothing_extracted(destination)
    assert not (tmp_path / "out" / "evil.txt").exists()


def test_links_inside_the_tree_become_regular_files_not_symlinks(tmp_path):
    archive_path = tmp_path / "links.tar"
    with tarfile.open(archive_path, "w") as archive:
        add_tar_entry(archive, "images/a.jpg", b"picture")
        add_tar_entry(archive, "images/alias.jpg", kind=tarfile.SYMTYPE, linkname="a.jpg")
        add_tar_entry(archive, "copy/hard.jpg", kind=tarfile.LNKTYPE, linkname="images/a.jpg")
        add_tar_entry(archive, "images/folder_link", kind=tarfile.SYMTYPE, linkname=".")
    destination = archives.extract_archive(archive_path, tmp_path / "links")
    for name in ("images/alias.jpg", "copy/hard.jpg"):
        path = destination / name
        assert not path.is_symlink()
        assert path.read_bytes() == b"picture"
    assert not (destination / "images" / "folder_link").exists()
    assert not any(path.is_symlink() for path in destination.rglob("*"))


def test_marker_skips_a_second_extraction(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "data.zip")
    destination = tmp_path / "data"
    archives.extract_archive(archive, destination)
    marker_time = (destination / archives.MARKER_NAME).stat().st_mtime_ns

    def must_not_open(plan):
        raise AssertionError("the archive was opened again")

    monkeypatch.setattr(archives, "open_reader", must_not_open)
    assert archives.extract_archive(archive, destination) == destination
    assert (destination / archives.MARKER_NAME).stat().st_mtime_ns == marker_time
    # A changed archive is extracted again.
    monkeypatch.undo()
    make_zip(archive, {"other.jpg": b"new content"})
    archives.extract_archive(archive, destination)
    assert tree_contents(destination) == {"other.jpg": b"new content"}


def test_interrupted_extraction_leaves_no_destination(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "data.zip")
    destination = tmp_path / "out" / "data"
    original = archives._write_member
    calls = []

    def fail_on_second(reader, member, target, budget):
        calls.append(member.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(reader, member, target, budget)

    monkeypatch.setattr(archives, "_write_member", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        archives.extract_archive(archive, destination)
    assert_nothing_extracted(destination)


def test_failed_re_extraction_keeps_the_previous_tree(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "data.zip")
    destination = archives.extract_archive(archive, tmp_path / "data")
    monkeypatch.setattr(archives, "_write_member", lambda *arguments: (_ for _ in ()).throw(OSError("disk error")))
    with pytest.raises(PipelineError, match="disk error"):
        archives.extract_archive(archive, destination, force=True)
    assert tree_contents(destination) == CONTENT


def test_not_enough_disk_space_is_reported(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "data.zip")
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(PipelineError, match="not enough free disk space"):
        archives.extract_archive(archive, tmp_path / "data")
    assert_nothing_extracted(tmp_path / "data")


def test_rar_without_backend_names_the_tools_to_install(tmp_path, monkeypatch):
    rarfile = pytest.importorskip("rarfile")

    def no_tool(*arguments, **keywords):
        raise rarfile.RarCannotExec("Cannot find working tool")

    monkeypatch.setattr(rarfile, "tool_setup", no_tool)
    archive = tmp_path / "AffectNet.part1.rar"
    archive.write_bytes(b"Rar!\x1a\x07\x01\x00")
    with pytest.raises(PipelineError, match=r"unrar.*unar.*bsdtar.*7z") as caught:
        archives.extract_archive(archive, tmp_path / "AffectNet")
    assert "apt install unrar" in str(caught.value)
    assert_nothing_extracted(tmp_path / "AffectNet")


def rar4_block(head_type: int, flags: int, body: bytes, data: bytes = b"") -> bytes:
    """One RAR 4 block: CRC16 (low half of the CRC32 of the rest of the header), type, flags, size."""
    header = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header + data


def make_rar4(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    """Write a RAR 4 archive of stored (uncompressed) Unix entries: (name, data, mode).

    No tool can create RAR files freely, but stored entries are simple enough to write here,
    and rarfile reads them without an external tool.
    """
    content = b"Rar!\x1a\x07\x00" + rar4_block(0x73, 0, struct.pack("<HI", 0, 0))
    dos_time = (44 << 25) | (1 << 21) | (1 << 16)  # 2024-01-01
    for name, data, mode in entries:
        encoded = name.encode()
        body = struct.pack(
            "<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), dos_time, 20, 0x30, len(encoded), mode
        ) + encoded
        content += rar4_block(0x74, 0x8000, body, data)
    path.write_bytes(content + rar4_block(0x7B, 0, b""))
    return path


@pytest.fixture
def rar_backend_present(monkeypatch):
    """Pretend a RAR tool is installed: stored entries are read by rarfile itself."""
    rarfile = pytest.importorskip("rarfile")
    monkeypatch.setattr(rarfile, "tool_setup", lambda *arguments, **keywords: None)


def test_rar_archive_is_extracted_through_rarfile(tmp_path, rar_backend_present):
    entries = [(name, data, stat.S_IFREG | 0o644) for name, data in CONTENT.items()]
    entries.append(("dataset/alias.jpg", b"train/happy/a.jpg", stat.S_IFLNK | 0o777))
    archive = make_rar4(tmp_path / "data.rar", entries)
    destination = archives.extract_archive(archive, tmp_path / "data")
    assert tree_contents(destination) == {**CONTENT, "dataset/alias.jpg": CONTENT["dataset/train/happy/a.jpg"]}
    assert not (destination / "dataset" / "alias.jpg").is_symlink()


def test_rar_symlink_to_outside_is_refused(tmp_path, rar_backend_present):
    archive = make_rar4(
        tmp_path / "bad.rar",
        [("ok.jpg", b"fine", stat.S_IFREG | 0o644), ("sub/escape", b"../../etc/passwd", stat.S_IFLNK | 0o777)],
    )
    with pytest.raises(archives.UnsafeArchiveError, match=r"bad\.rar.*'sub/escape'.*points outside"):
        archives.extract_archive(archive, tmp_path / "bad")
    assert_nothing_extracted(tmp_path / "bad")


@pytest.mark.skipif(
    shutil.which("rar") is None or not any(shutil.which(tool) for tool in archives.RAR_TOOLS),
    reason="needs the 'rar' tool to build an archive and a RAR backend to read it",
)
def test_rar_archive_is_extracted(tmp_path):
    import subprocess

    source = tmp_path / "source"
    for name, data in CONTENT.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    subprocess.run(["rar", "a", "-r", "-idq", str(tmp_path / "data.rar"), "dataset"], cwd=source, check=True)
    destination = archives.extract_archive(tmp_path / "data.rar", tmp_path / "data")
    assert tree_contents(destination) == CONTENT


def test_extraction_never_follows_an_existing_symlink(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    archive = make_zip(tmp_path / "data.zip", {"a.txt": b"new"})
    destination = tmp_path / "data"
    archives.extract_archive(archive, destination)
    # Someone replaced an extracted file with a link; a forced re-extraction builds a fresh tree.
    (destination / "a.txt").unlink()
    os.symlink(outside, destination / "a.txt")
    archives.extract_archive(archive, destination, force=True)
    assert outside.read_text() == "keep me"
    assert (destination / "a.txt").read_bytes() == b"new" and not (destination / "a.txt").is_symlink()
