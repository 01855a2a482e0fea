"""The ``get_data.py`` stage: bring the datasets into ``data/raw`` and extract them.

Sources are local paths (``get_data.source_kind = "local"``) or a Google Drive folder
(``"drive"``, see ``drive.py``). What arrives is never edited afterwards:

- archive files and archive pieces go to ``data/raw/archives/``;
- folders go to ``data/raw/folders/<name>/``;
- other single files (a label CSV shipped beside the archives) go to ``data/raw/files/``.

With ``get_data.extract`` each archive set is then extracted into
``data/raw/extracted/<set name>/`` (archives found inside a folder source too, split sets
joined), the other files of each folder are mirrored as ``data/raw/extracted/<name>/``, and
loose files are gathered in ``data/raw/extracted/files/``: the consolidation stage reads only
``data/raw/extracted``. A damaged, unsafe or incomplete archive set fails on its own (one
``FAILED`` line, exit status 1) while the others are extracted; ``reports/get_data_summary.json``
is written in every case. Copies are hard links where the filesystem allows (the content is
never modified, so sharing it costs no safety and halves the disk use of a 60 GB dataset).
A re-run with unchanged sources copies and extracts nothing.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from emotion_classifier import archive_sets, archives, files
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config

logger = logging.getLogger(__name__)

COPY_MARKER_NAME = ".copied.json"
LOOSE_FILES_FOLDER = "files"
# The other files of a folder that also holds an archive of its own name are extracted beside it.
LOOSE_SUFFIX = "_loose_files"
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


def _has_valid_name(path: Path) -> bool:
    """False for a name that is not valid UTF-8 (the label and manifest files are UTF-8)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        logger.warning("skipping %r: its name is not valid UTF-8", path)
        return False
    return True


def _link_tree(source: Path, destination: Path, skip: Callable[[Path], bool] | None = None) -> int:
    """Recreate ``source``'s files under ``destination`` as hard links (copies where refused).

    Files for which ``skip`` is true are left out, and so are names that are not valid UTF-8.
    """
    count = 0
    walk = os.walk(source, followlinks=False)
    for directory, folder_names, file_names in tqdm(walk, desc=f"linking {source.name}", unit="folder", leave=False):
        folder_names[:] = sorted(name for name in folder_names if _has_valid_name(Path(directory) / name))
        relative = Path(directory).relative_to(source)
        (destination / relative).mkdir(parents=True, exist_ok=True)
        for name in sorted(file_names):
            if directory == str(source) and name in (COPY_MARKER_NAME, archives.MARKER_NAME):
                continue  # the marker of an earlier copy describes that copy, not the data
            source_file = Path(directory) / name
            if not _has_valid_name(source_file) or (skip is not None and skip(source_file)):
                continue
            if source_file.is_symlink() and not source_file.is_file():
                logger.warning("skipping broken or non-file link %s", source_file)
                continue
            try:
                os.link(source_file, destination / relative / name)
            except OSError:
                shutil.copy2(source_file, destination / relative / name)
            count += 1
    return count


def mirror_folder(source: Path, destination: Path, marker_name: str,
                  skip: Callable[[Path], bool] | None = None) -> bool:
    """Make ``destination`` a linked copy of ``source``; return False when it already was.

    The copy is built in a temporary sibling folder and swapped in when complete; a marker
    holding the source's fingerprint (paths, sizes, modification times) makes a re-run free.
    Files for which ``skip`` is true are left out.
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
        _link_tree(source, partial, skip)
        files.write_json(partial / marker_name, {"source": str(source), "fingerprint": fingerprint})
        archives.replace_folder(partial, destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return True


def _folder_contents(folder: Path) -> tuple[list[Path], bool]:
    """The archive files anywhere in a brought-in folder, and whether it holds any other file."""
    archive_files: list[Path] = []
    has_other_files = False
    for directory, folder_names, file_names in os.walk(folder):
        folder_names[:] = sorted(name for name in folder_names if not name.startswith("."))
        for name in sorted(file_names):
            if name.startswith("."):
                continue
            path = Path(directory) / name
            if archive_sets.is_archive_file(path):
                archive_files.append(path)
            else:
                has_other_files = True
    return archive_files, has_other_files


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


@dataclasses.dataclass
class _Acquisition:
    """What one run brought in, extracted and failed at; written as the summary."""

    brought_in: list[str] = dataclasses.field(default_factory=list)
    already_present: list[str] = dataclasses.field(default_factory=list)
    archive_files: list[Path] = dataclasses.field(default_factory=list)
    loose_files: list[Path] = dataclasses.field(default_factory=list)
    folders: dict[str, Path] = dataclasses.field(default_factory=dict)
    archive_sets: list[list[Path]] = dataclasses.field(default_factory=list)
    extracted: list[dict] = dataclasses.field(default_factory=list)
    # (file, archive set or "get_data", reason) for everything that could not be done.
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    # Drive pieces of multi-part sets that did not arrive, by set key: (name, reason).
    missing_pieces: dict[tuple[str, str, str], tuple[str, str]] = dataclasses.field(default_factory=dict)

    def note(self, path: Path, copied: bool) -> None:
        (self.brought_in if copied else self.already_present).append(str(path))


def _bring_in_local(settings, raw: Path, cache: DigestCache, state: _Acquisition) -> None:
    if not settings.sources:
        raise PipelineError(
            "get_data.sources is empty: list the dataset archives or folders in the configuration, "
            'e.g. sources = ["~/Downloads/AffectNet.zip.*"]'
        )
    for source in _expand_sources(settings.sources):
        if source.is_dir():
            target = raw / "folders" / source.resolve().name
            state.note(target, mirror_folder(source, target, COPY_MARKER_NAME))
            state.folders[target.name] = target
            continue
        is_archive = archive_sets.is_archive_file(source)
        target, copied = bring_in_file(source, raw / "archives" if is_archive else raw / "files", cache)
        state.note(target, copied)
        (state.archive_files if is_archive else state.loose_files).append(target)


def _bring_in_from_drive(settings, archives_folder: Path, state: _Acquisition) -> None:
    from emotion_classifier import drive

    result = drive.download(settings, destination=archives_folder)
    fetched = {Path(path) for path in result.fetched}
    for path in map(Path, result.files):
        state.note(path, path in fetched)
        (state.archive_files if archive_sets.is_archive_file(path) else state.loose_files).append(path)
    for name, reason in result.failures:
        state.failures.append((str(name), str(reason)))
        piece = archive_sets.classify(archives_folder / str(name))
        if piece is not None and piece.set_kind in ("split_zip", "rar"):
            state.missing_pieces.setdefault(archive_sets.set_key(piece), (piece.path.name, str(reason)))


def _check_unique_names(state: _Acquisition, mirrored_folders: list[str]) -> None:
    """Two sources must not be extracted into one folder of data/raw/extracted."""
    named: dict[str, list[str]] = {}
    for archive_set in state.archive_sets:
        named.setdefault(archive_sets.archive_set_name(archive_set), []).append(archive_set[0].name)
    for name in mirrored_folders:
        named.setdefault(name, []).append(f"folder {name}")
    if state.loose_files:
        named.setdefault(LOOSE_FILES_FOLDER, []).append("loose files")
    for name, origins in named.items():
        if len(origins) > 1:
            raise PipelineError(
                f"get_data.sources: {', '.join(origins)} would all be extracted to data/raw/extracted/{name}; "
                "rename one of them"
            )


def _extract_set(archive_set: list[Path], extracted_root: Path, state: _Acquisition, force: bool,
                 cache: DigestCache, limits: archives.ExtractionLimits) -> None:
    """Extract one archive set; a problem with it is recorded as its failure, the others go on."""
    destination = extracted_root / archive_sets.archive_set_name(archive_set)
    try:
        missing = state.missing_pieces.get(archive_sets.set_key(archive_sets.classify(archive_set[0])))
        if missing is not None:
            raise PipelineError(
                f"{archive_sets.set_label(archive_set)}: incomplete multi-part archive: the piece {missing[0]} "
                f"was not brought in ({missing[1]}); nothing of this set was extracted"
            )
        was_current = not force and archives.is_extracted(archive_set, destination, cache.digest)
        archives.extract_archive(archive_set, destination, force=force, digest=cache.digest, limits=limits)
    except PipelineError as error:
        logger.error("%s", error)
        state.failures.append((archive_set[0].name, str(error)))
        return
    state.extracted.append({
        "name": destination.name,
        "archives": [path.name for path in archive_set],
        "status": "already extracted" if was_current else "extracted",
    })


def _extract_all(settings, extracted_root: Path, state: _Acquisition, force: bool, cache: DigestCache) -> None:
    """Extract every archive set, mirror the folders' other files and gather the loose files."""
    mirrored: dict[str, Path] = {}
    for name, folder in state.folders.items():
        inner_archives, has_other_files = _folder_contents(folder)
        state.archive_files.extend(inner_archives)
        inner_names = {archive_sets.archive_set_name(archive_set)
                       for archive_set in archive_sets.find_archive_sets(inner_archives)}
        if has_other_files or not inner_archives:
            # fer2013/ holding fer2013.tar.gz and a readme: the readme goes beside, not over it.
            mirrored[f"{name}{LOOSE_SUFFIX}" if name in inner_names else name] = folder
    state.archive_sets = archive_sets.find_archive_sets(state.archive_files)
    _check_unique_names(state, list(mirrored))
    limits = archives.ExtractionLimits.from_settings(settings)
    for archive_set in state.archive_sets:
        _extract_set(archive_set, extracted_root, state, force, cache, limits)
    for name, folder in mirrored.items():
        # Archives in the folder were extracted above; its other files are linked as they are.
        copied = mirror_folder(folder, extracted_root / name, archives.MARKER_NAME, skip=archive_sets.is_archive_file)
        state.extracted.append({"name": name, "folder": str(folder), "status": "linked" if copied else "already linked"})
    if state.loose_files:
        copied = _gather_loose_files(state.loose_files, extracted_root / LOOSE_FILES_FOLDER)
        state.extracted.append({"name": LOOSE_FILES_FOLDER, "files": [path.name for path in state.loose_files],
                                "status": "linked" if copied else "already linked"})


def run(config: Config, force: bool = False) -> int:
    """Bring every configured source into ``data/raw`` and extract it; return the exit status.

    0: everything done; 1: some archives or downloads failed and the rest was done; 2: nothing
    could be done. The summary is written in every case, also when a problem stops the run.
    """
    settings = config.get_data
    raw = config.paths.raw
    cache = DigestCache(raw / DIGEST_CACHE_NAME)
    state = _Acquisition()
    try:
        if settings.source_kind == "local":
            _bring_in_local(settings, raw, cache, state)
        else:
            _bring_in_from_drive(settings, raw / "archives", state)
        if settings.extract:
            _extract_all(settings, raw / "extracted", state, force, cache)
        else:
            state.archive_sets = archive_sets.find_archive_sets(state.archive_files)
    except PipelineError as error:
        state.failures.append(("get_data", str(error)))
        _write_summary(config, settings.source_kind, state)
        raise
    finally:
        cache.save()
    summary = _write_summary(config, settings.source_kind, state)
    _print_summary(summary)
    if not state.failures:
        return 0
    done = state.extracted if settings.extract else state.brought_in + state.already_present
    return 1 if done else 2


def _write_summary(config: Config, source_kind: str, state: _Acquisition) -> dict:
    summary = {
        "source_kind": source_kind,
        "files_brought_in": state.brought_in,
        "files_already_present": state.already_present,
        "archive_sets": [[path.name for path in archive_set] for archive_set in state.archive_sets],
        "extracted": state.extracted,
        "failures": [{"name": name, "reason": reason} for name, reason in state.failures],
    }
    files.write_json(config.paths.reports / "get_data_summary.json", summary)
    return summary


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
