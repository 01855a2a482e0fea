"""The ``consolidate_data.py`` stage: one images root and one labels root from the extracted trees.

Every image below ``data/raw/extracted/*/`` is gathered into ``data/interim/images`` and every
label file (csv, npy, txt, json, mat) into ``data/interim/labels``, keeping paths relative to
each extracted source, so the paths written inside label files stay valid. An extracted source
that only wraps one folder (``Manually_Annotated_Images/689/x.jpg``, while ``training.csv``
says ``689/x.jpg``) is entered once when ``consolidate.strip_single_top_folder`` is set.

Files are hard-linked where the filesystem allows, so consolidation does not double the disk
use. The same relative path coming from two sources is a duplicate when the content is
identical (skipped) and a conflict otherwise (the first source wins; both are listed in
``data/interim/duplicates.csv``). The new trees are built in temporary folders and swapped in at
the end, so an interruption leaves the previous complete trees.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from emotion_classifier import archives, files
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
LABEL_EXTENSIONS = frozenset({".csv", ".npy", ".txt", ".json", ".mat"})
# Folders that archivers add and that never hold data (macOS resource forks).
IGNORED_FOLDERS = frozenset({"__MACOSX"})
DUPLICATE_COLUMNS = ["relative_path", "kind", "status", "kept", "skipped"]
STAMP_NAME = ".consolidate.stamp.json"

logger = logging.getLogger(__name__)


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_FOLDERS


def _is_valid_name(name: str) -> bool:
    """False for a name that is not valid UTF-8 (the label and manifest files are UTF-8)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def content_root(folder: Path, strip_single_top_folder: bool) -> Path:
    """The folder whose relative paths label files use: ``folder``, or its only subfolder.

    Only one level is stripped: ``fer/train/happy`` keeps ``train/happy`` even if ``train`` is
    alone, because class names live in those folder names.
    """
    if not strip_single_top_folder:
        return folder
    entries = [entry for entry in folder.iterdir() if not _is_ignored(entry.name)]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return folder


class _Linker:
    """Places files by hard link or copy, following ``consolidate.link_mode``."""

    def __init__(self, link_mode: str):
        if link_mode not in ("auto", "hardlink", "copy"):
            raise ValueError(f"consolidate.link_mode must be auto, hardlink or copy, got {link_mode!r}")
        self.link_mode = link_mode
        self.linked = 0
        self.copied = 0

    def place(self, source: Path, target: Path) -> None:
        if self.link_mode != "copy":
            try:
                os.link(source, target)
                self.linked += 1
                return
            except OSError as error:
                if self.link_mode == "hardlink":
                    raise PipelineError(
                        f"cannot hard-link {source} into {target.parent} ({error}); keep data/raw and "
                        "data/interim on one filesystem or set consolidate.link_mode = \"copy\""
                    ) from error
        shutil.copy2(source, target)
        self.copied += 1

    def mode_used(self) -> str:
        if self.linked and self.copied:
            return "mixed"
        if self.copied:
            return "copy"
        return "hardlink" if self.linked else "none"


@dataclasses.dataclass
class _Counts:
    images: int = 0
    label_files: int = 0
    non_image_files_skipped: int = 0
    duplicate_names: int = 0
    conflicts: int = 0
    # Files and folders whose names are not valid UTF-8: skipped, with a warning naming each.
    invalid_names_skipped: int = 0
    # Links leading outside the dataset, FIFOs, sockets, devices: skipped, with a warning naming each.
    special_files_skipped: int = 0


def _not_placeable(path: Path, root: Path) -> str | None:
    """Why ``path`` cannot be placed (None: it can): only regular files are, and symbolic links
    to one inside the dataset's own folder; a FIFO is never opened (copying one blocks)."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        resolved = path.resolve()
        if not resolved.is_relative_to(root.resolve()):
            return f"a symbolic link leading outside the dataset (to {resolved})"
        return None if resolved.is_file() else "a symbolic link to something that is not a file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a named pipe, socket or device)"
    return None


def _source_folders(extracted_root: Path) -> list[Path]:
    if not extracted_root.is_dir():
        raise PipelineError(f"{extracted_root} does not exist: run get_data.py first")
    folders = sorted(
        entry for entry in extracted_root.iterdir() if entry.is_dir() and not _is_ignored(entry.name)
    )
    if not folders:
        raise PipelineError(f"{extracted_root} holds no extracted dataset: run get_data.py first")
    return folders


def _duplicate_row(kept: Path, skipped: Path, relative: str, kind: str, counts: _Counts) -> dict:
    """The duplicates.csv row for a second file at an already placed path, counted."""
    identical = files.same_content(kept, skipped)
    if identical:
        counts.duplicate_names += 1
    else:
        counts.conflicts += 1
    return {"relative_path": relative, "kind": kind, "status": "duplicate" if identical else "conflict",
            "kept": str(kept), "skipped": str(skipped)}


def _consolidate(
    sources: list[Path], images: Path, labels: Path, strip_single_top_folder: bool, linker: _Linker
) -> tuple[_Counts, list[dict], list[dict]]:
    """Place every file of ``sources`` into the (empty) ``images`` and ``labels`` folders."""
    counts = _Counts()
    placed: dict[tuple[str, str], Path] = {}
    created_folders: set[Path] = set()
    duplicate_rows: list[dict] = []
    per_source: list[dict] = []
    progress = tqdm(desc="consolidating", unit="file")
    for source in sources:
        root = content_root(source, strip_single_top_folder)
        source_counts = {"name": source.name, "content_root": str(root), "images": 0, "label_files": 0}
        for directory, folder_names, file_names in os.walk(root):
            invalid = [name for name in folder_names + file_names if not _is_valid_name(name)]
            for name in invalid:
                logger.warning("skipping %r: its name is not valid UTF-8", os.path.join(directory, name))
            counts.invalid_names_skipped += len(invalid)
            folder_names[:] = sorted(
                name for name in folder_names if not _is_ignored(name) and _is_valid_name(name)
            )
            relative_folder = Path(directory).relative_to(root)
            for name in sorted(file_names):
                if _is_ignored(name) or not _is_valid_name(name):
                    continue
                progress.update()
                suffix = Path(name).suffix.lower()
                if suffix in IMAGE_EXTENSIONS:
                    kind, target_root = "image", images
                elif suffix in LABEL_EXTENSIONS:
                    kind, target_root = "label", labels
                else:
                    counts.non_image_files_skipped += 1
                    continue
                relative = (relative_folder / name).as_posix()
                source_file = Path(directory) / name
                reason = _not_placeable(source_file, root)
                if reason is not None:
                    logger.warning("skipping %s: %s", source_file, reason)
                    counts.special_files_skipped += 1
                    continue
                kept = placed.get((kind, relative))
                if kept is not None:
                    duplicate_rows.append(_duplicate_row(kept, source_file, relative, kind, counts))
                    continue
                target = target_root / relative_folder / name
                if target.parent not in created_folders:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    created_folders.add(target.parent)
                linker.place(source_file, target)
                placed[(kind, relative)] = source_file
                if kind == "image":
                    counts.images += 1
                    source_counts["images"] += 1
                else:
                    counts.label_files += 1
                    source_counts["label_files"] += 1
        per_source.append(source_counts)
    progress.close()
    return counts, duplicate_rows, per_source


def run(config: Config, force: bool = False) -> int:
    """Build ``data/interim/images`` and ``data/interim/labels``; return the exit status."""
    settings = config.consolidate
    extracted_root = config.paths.raw / "extracted"
    images_root = config.paths.images_root
    labels_root = config.paths.labels_root
    duplicates_path = config.paths.interim / "duplicates.csv"
    summary_path = config.paths.reports / "consolidate_summary.json"
    sources = _source_folders(extracted_root)
    stamp = files.StageStamp(
        config.paths.interim / STAMP_NAME,
        settings=dataclasses.asdict(settings),
        inputs=[extracted_root],
    )
    if not force and stamp.is_current():
        print(f"consolidate: up to date ({images_root}, {labels_root}); use --force to rebuild")
        return 0

    config.paths.interim.mkdir(parents=True, exist_ok=True)
    linker = _Linker(settings.link_mode)
    for root in (images_root, labels_root):
        archives.remove_stale_partials(root)
    images_partial = Path(tempfile.mkdtemp(prefix=f".{images_root.name}.partial-", dir=config.paths.interim))
    labels_partial = Path(tempfile.mkdtemp(prefix=f".{labels_root.name}.partial-", dir=config.paths.interim))
    try:
        counts, duplicate_rows, per_source = _consolidate(
            sources, images_partial, labels_partial, settings.strip_single_top_folder, linker
        )
        if counts.images == 0:
            raise PipelineError(
                f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {extracted_root}: "
                "check get_data.sources"
            )
        archives.replace_folder(images_partial, images_root)
        archives.replace_folder(labels_partial, labels_root)
    except BaseException:
        shutil.rmtree(images_partial, ignore_errors=True)
        shutil.rmtree(labels_partial, ignore_errors=True)
        raise

    files.save_csv(duplicates_path, pd.DataFrame(duplicate_rows, columns=DUPLICATE_COLUMNS))
    summary = {
        **dataclasses.asdict(counts),
        "link_mode": linker.mode_used(),
        "images_root": str(images_root),
        "labels_root": str(labels_root),
        "sources": per_source,
    }
    files.write_json(summary_path, summary)
    stamp.record([images_root, labels_root, duplicates_path, summary_path])
    print(
        f"consolidate: {counts.images} images, {counts.label_files} label files, "
        f"{counts.non_image_files_skipped} non-image files skipped, {counts.duplicate_names} duplicate names, "
        f"{counts.conflicts} conflicts (listed in {duplicates_path}); link mode: {linker.mode_used()}"
    )
    return 0
