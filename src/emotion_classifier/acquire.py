"""The ``get_data.py`` stage: bring the datasets into ``data/raw`` and extract them.

Sources are local paths (``get_data.source_kind = "local"``) or a Google Drive folder
(``"drive"``, see ``drive.py``). What arrives is never edited afterwards:

- archive files and archive pieces go to ``data/raw/archives/``;
- folders go to ``data/raw/folders/<name>/``;
- other single files (a label CSV shipped beside the archives) go to ``data/raw/files/``.

With ``get_data.extract`` each archive set is then extracted into
``data/raw/extracted/<set name>/``, each folder is mirrored as ``data/raw/extracted/<name>/``,
and loose files are gathered in ``data/raw/extracted/files/``: the consolidation stage reads
only ``data/raw/extracted``. Copies are hard links where the filesystem allows (the content is
never modified, so sharing it costs no safety and halves the disk use of a 60 GB dataset).
A re-run with unchanged sources copies and extracts nothing.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tqdm import tqdm

from emotion_classifier import archives, files
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config

logger = logging.getLogger(__name__)

COPY_MARKER_NAME = ".copied.json"
LOOSE_FILES_FOLDER = "files"
DIGEST_CACHE_NAME = ".digests.json"
# Files larger than this get a progress bar while being copied.
PROGRESS_MIN_BYTES = 256 * 1024 * 1024


class DigestCache:
    """md5 digests of large files, remembered by path, size and modification time.

    Comparing a 60 GB archive with its copy would read 120 GB on every re-run; the cache keeps
    a re-run down to a few stat calls while still noticing any rewritten file.
    """

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, dict] = {}
        self._changed = False
        if path.is_file():
            try:
                loaded = files.read_json(path)
            except (OSError, ValueError):
                loaded = {}
            if isinstance(loaded, dict):
                self._entries = loaded

    def digest(self, file_path: Path) -> str:
        status = file_path.stat()
        key = str(file_path.resolve())
        entry = self._entries.get(key)
        if entry and entry.get("size") == status.st_size and entry.get("mtime_ns") == status.st_mtime_ns:
            return entry["md5"]
        value = files.file_digest(file_path)
        self._entries[key] = {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "md5": value}
        self._changed = True
        return value

    def save(self) -> None:
        if self._changed:
            files.write_json(self.path, self._entries)
            self._changed = False


def _copy_with_progress(source: Path, target: Path) -> None:
    size = source.stat().st_size
    with open(source, "rb") as reader, open(target, "wb") as writer, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"copying {source.name}", disable=size < PROGRESS_MIN_BYTES
    ) as progress:
        while chunk := reader.read(1 << 22):
            writer.write(chunk)
            progress.update(len(chunk))
    shutil.copystat(source, target)


def bring_in_file(source: Path, folder: Path, cache: DigestCache) -> tuple[Path, bool]:
    """Copy ``source`` into ``folder`` unless an identical file is there; return (path, copied).

    The copy is made under a temporary name and renamed, so an interrupted copy never looks
    like a complete archive; a hard link replaces the copy where the filesystem allows.
    """
    target = folder / source.name
    if target.is_file() and files.same_content(source, target, cache.digest):
        return target, False
    folder.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(target, suffix="") as temporary:
        temporary.unlink()
        try:
            os.link(source, temporary)
        except OSError:
            _copy_with_progress(source, temporary)
    logger.info("brought in %s", target)
    return target, True


def _link_tree(source: Path, destination: Path) -> int:
    """Recreate ``source``'s files under ``destination`` as hard links (copies where refused)."""
    count = 0
    walk = os.walk(source, followlinks=False)
    for directory, folder_names, file_names in tqdm(walk, desc=f"linking {source.name}", unit="folder", leave=False):
        folder_names.sort()
        relative = Path(directory).relative_to(source)
        (destination / relative).mkdir(parents=True, exist_ok=True)
        for name in sorted(file_names):
            if directory == str(source) and name in (COPY_MARKER_NAME, archives.MARKER_NAME):
                continue  # the marker of an earlier copy describes that copy, not the data
            source_file = Path(directory) / name
            if source_file.is_symlink() and not source_file.is_file():
                logger.warning("skipping broken or non-file link %s", source_file)
                continue
            try:
                os.link(source_file, destination / relative / name)
            except OSError:
                shutil.copy2(source_file, destination / relative / name)
            count += 1
    return count


def mirror_folder(source: Path, destination: Path, marker_name: str) -> bool:
    """Make ``destination`` a linked copy of ``source``; return False when it already was.

    The copy is built in a temporary sibling folder and swapped in when complete; a marker
    holding the source's fingerprint (paths, sizes, modification times) makes a re-run free.
    """
    source = source.resolve()
    fingerprint = files.tree_fingerprint([source])
    marker = destination / marker_name
    if marker.is_file():
        try:
            recorded = files.read_json(marker)
        except (OSError, ValueError):
            recorded = None
        if recorded == {"source": str(source), "fingerprint": fingerprint}:
            return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        _link_tree(source, partial)
        files.write_json(partial / marker_name, {"source": str(source), "fingerprint": fingerprint})
        archives.replace_folder(partial, destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return True


def _expand_sources(sources: list[str]) -> list[Path]:
    """Resolve ``~`` and glob patterns (``AffectNet.zip.*``); a path that matches nothing is an error."""
    paths: list[Path] = []
    for source in sources:
        expanded = os.path.expanduser(source)
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded))
            if not matches:
                raise PipelineError(f"get_data.sources: the pattern {source!r} matches no file")
            paths.extend(Path(match) for match in matches)
        else:
            path = Path(expanded)
            if not path.exists():
                raise PipelineError(f"get_data.sources: {source!r} does not exist ({path.resolve()})")
            paths.append(path)
    return paths


def _check_unique_names(named: dict[str, list[str]]) -> None:
    for name, origins in named.items():
        if len(origins) > 1:
            raise PipelineError(
                f"get_data.sources: {', '.join(origins)} would all be extracted to data/raw/extracted/{name}; "
                "rename one of them"
            )


def run(config: Config, force: bool = False) -> int:
    """Bring every configured source into ``data/raw`` and extract it; return the exit status."""
    settings = config.get_data
    raw = config.paths.raw
    archives_folder = raw / "archives"
    extracted_root = raw / "extracted"
    cache = DigestCache(raw / DIGEST_CACHE_NAME)
    brought_in: list[str] = []
    already_present: list[str] = []
    archive_files: list[Path] = []
    loose_files: list[Path] = []
    folders: dict[str, Path] = {}
    failures: list[tuple[str, str]] = []

    if settings.source_kind == "local":
        if not settings.sources:
            raise PipelineError(
                "get_data.sources is empty: list the dataset archives or folders in the configuration, "
                'e.g. sources = ["~/Downloads/AffectNet.zip.*"]'
            )
        for source in _expand_sources(settings.sources):
            if source.is_dir():
                target = raw / "folders" / source.resolve().name
                copied = mirror_folder(source, target, COPY_MARKER_NAME)
                (brought_in if copied else already_present).append(str(target))
                folders[target.name] = target
                continue
            folder = archives_folder if archives.is_archive_file(source) else raw / "files"
            target, copied = bring_in_file(source, folder, cache)
            (brought_in if copied else already_present).append(str(target))
            (archive_files if folder == archives_folder else loose_files).append(target)
    else:
        from emotion_classifier import drive

        result = drive.download(settings, destination=archives_folder)
        failures = [(str(name), str(reason)) for name, reason in result.failures]
        for path in result.files:
            path = Path(path)
            brought_in.append(str(path))
            (archive_files if archives.is_archive_file(path) else loose_files).append(path)

    archive_sets = archives.find_archive_sets(archive_files)
    extracted: list[dict] = []
    if settings.extract:
        names: dict[str, list[str]] = {}
        for archive_set in archive_sets:
            names.setdefault(archives.archive_set_name(archive_set), []).append(archive_set[0].name)
        for name, folder in folders.items():
            names.setdefault(name, []).append(f"folder {folder.name}")
        if loose_files:
            names.setdefault(LOOSE_FILES_FOLDER, []).append("loose files")
        _check_unique_names(names)
        for archive_set in archive_sets:
            destination = extracted_root / archives.archive_set_name(archive_set)
            was_current = not force and archives.is_extracted(archive_set, destination, cache.digest)
            archives.extract_archive(archive_set, destination, force=force, digest=cache.digest)
            extracted.append(
                {
                    "name": destination.name,
                    "archives": [path.name for path in archive_set],
                    "status": "already extracted" if was_current else "extracted",
                }
            )
        for name, folder in folders.items():
            copied = mirror_folder(folder, extracted_root / name, archives.MARKER_NAME)
            extracted.append({"name": name, "folder": str(folder), "status": "linked" if copied else "already linked"})
        if loose_files:
            copied = _gather_loose_files(loose_files, extracted_root / LOOSE_FILES_FOLDER)
            extracted.append(
                {"name": LOOSE_FILES_FOLDER, "files": [path.name for path in loose_files],
                 "status": "linked" if copied else "already linked"}
            )
    cache.save()

    summary = {
        "source_kind": settings.source_kind,
        "files_brought_in": brought_in,
        "files_already_present": already_present,
        "archive_sets": [[path.name for path in archive_set] for archive_set in archive_sets],
        "extracted": extracted,
        "failures": [{"name": name, "reason": reason} for name, reason in failures],
    }
    files.write_json(config.paths.reports / "get_data_summary.json", summary)
    _print_summary(summary)
    return 1 if failures else 0


def _gather_loose_files(paths: list[Path], destination: Path) -> bool:
    """Link single non-archive files (label files) into one extracted folder; False if current."""
    names = [path.name for path in paths]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise PipelineError(f"get_data.sources: several files are named {', '.join(duplicated)}; rename them")
    record = {"files": files.tree_fingerprint(sorted(paths))}
    marker = destination / archives.MARKER_NAME
    if marker.is_file():
        try:
            if files.read_json(marker) == record:
                return False
        except (OSError, ValueError):
            pass
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        for path in paths:
            try:
                os.link(path, partial / path.name)
            except OSError:
                shutil.copy2(path, partial / path.name)
        files.write_json(partial / archives.MARKER_NAME, record)
        archives.replace_folder(partial, destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return True


def _print_summary(summary: dict) -> None:
    print(
        f"get_data: {len(summary['files_brought_in'])} brought in, "
        f"{len(summary['files_already_present'])} already present"
    )
    for item in summary["extracted"]:
        print(f"  data/raw/extracted/{item['name']}: {item['status']}")
    for failure in summary["failures"]:
        print(f"  FAILED {failure['name']}: {failure['reason']}")
