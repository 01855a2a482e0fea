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
from pathlib import Path
from typing import Iterable

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


def path_problems(images_root: Path, filenames: Iterable[str]) -> np.ndarray:
    """The reason each file may not be read ("" where it may), in the order given."""
    filenames = pd.Series(list(filenames), dtype=object)
    reasons = written_path_problems(filenames)
    real_root = os.path.realpath(images_root)
    real_folders: dict[str, str] = {}
    for index, name in enumerate(filenames):
        if reasons[index]:
            continue
        path = os.path.join(images_root, name)
        folder = os.path.dirname(path)
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(folder)
        if not _inside(real_folders[folder], real_root):
            reasons[index] = f"{OUTSIDE_ROOT}: its folder leads to {real_folders[folder]}"
            continue
        reasons[index] = _file_problem(path, real_root)
    return reasons


def is_readable_image_path(images_root: Path, filename: str) -> bool:
    """True when ``filename`` passes every check above (for readers of a manifest)."""
    return path_problems(images_root, [filename])[0] == ""
