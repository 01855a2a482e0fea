"""Every image path a label source names must stay inside the images root and name a regular file.

A label file or a folder tree is data from elsewhere: a row of ``training.csv`` may say
``../../../etc/passwd``, and a class folder may hold a symbolic link to a photo outside the
dataset. Training must read only what the dataset contains, so before any image is opened (and
whether or not ``[labels] check_images`` is on) each path is checked:

- a path that is absolute, or climbs out with a ``..`` component, is rejected as written;
- the path is resolved, following symbolic links of its folders and of the file itself, and
  rejected when it lands outside the resolved images root;
- a named pipe, a socket, a device or a folder is rejected saying what it is, and never opened
  (opening a named pipe waits for a writer forever).

A missing file is left to the image checks, which report it as "missing file". The cost is one
``lstat`` per file and one ``realpath`` per folder, so a million rows take seconds.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from emotion_classifier.image_checks import describe_file_kind

OUTSIDE_ROOT = "path outside the images root"


def written_path_problems(filenames: pd.Series) -> np.ndarray:
    """The reason each path, as written, may not be used ("" where it may): vectorised."""
    text = filenames.astype(str)
    reasons = np.full(len(text), "", dtype=object)
    checks = (
        (text.str.contains("\x00", regex=False), "path holds a NUL character"),
        (text.str.match(r"^(?:[/\\]|[A-Za-z]:[/\\])"), f"{OUTSIDE_ROOT}: absolute path"),
        (text.str.contains(r"(?:^|[/\\])\.\.(?:[/\\]|$)", regex=True), f"{OUTSIDE_ROOT}: climbs out with '..'"),
    )
    for mask, reason in checks:
        target = mask.to_numpy(dtype=bool) & (reasons == "")
        reasons[target] = reason
    return reasons


def _inside(real_path: str, real_root: str) -> bool:
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def _file_problem(path: str, real_root: str) -> str:
    """Why the file at ``path`` (whose folder is inside the root) may not be read; "" if it may."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return ""
    except (OSError, ValueError) as error:
        return f"unusable path: {type(error).__name__}: {error}"
    if stat.S_ISLNK(status.st_mode):
        target = os.path.realpath(path)
        if not _inside(target, real_root):
            return f"{OUTSIDE_ROOT}: symbolic link to {target}"
        try:
            status = os.stat(path)
        except OSError:
            return ""  # a dangling link: the image checks report it missing
    kind = describe_file_kind(status.st_mode)
    return f"not an image file: {kind}, never opened" if kind else ""


def _folder_entries(folder: str) -> dict[str, os.DirEntry] | None:
    """The entries of ``folder`` by name (one directory read); None when the folder does not
    exist (its files are all missing), empty when it cannot be listed for another reason."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name: entry for entry in entries}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def path_problems(images_root: Path, filenames: Iterable[str]) -> np.ndarray:
    """The reason each file may not be read ("" where it may), in the order given.

    Each folder is resolved and listed once; a file its listing shows as a regular file (the
    usual case, known from the listing without a further system call) is fine. Anything else (a
    link, a special file, a name the listing lacks) gets the full check of ``_file_problem``.
    """
    filenames = pd.Series(list(filenames), dtype=object).astype(str)
    reasons = written_path_problems(filenames)
    real_root = os.path.realpath(images_root)
    texts = filenames.to_numpy()
    names: dict[int, str] = {}
    positions_by_folder: dict[str, list[int]] = {}
    for position in np.flatnonzero(reasons == "").tolist():
        folder, _, names[position] = texts[position].rpartition("/")
        positions_by_folder.setdefault(folder, []).append(position)
    for folder, positions in positions_by_folder.items():
        folder_path = os.path.join(images_root, folder)
        real_folder = os.path.realpath(folder_path)
        if not _inside(real_folder, real_root):
            reasons[positions] = f"{OUTSIDE_ROOT}: its folder leads to {real_folder}"
            continue
        entries = _folder_entries(folder_path)
        if entries is None:
            continue  # missing files: the image checks report them
        for position in positions:
            entry = entries.get(names[position])
            if entry is None or not entry.is_file(follow_symlinks=False):
                reasons[position] = _file_problem(os.path.join(folder_path, names[position]), real_root)
    return reasons


def is_readable_image_path(images_root: Path, filename: str) -> bool:
    """True when ``filename`` passes every check above (for readers of a manifest)."""
    return path_problems(images_root, [filename])[0] == ""
