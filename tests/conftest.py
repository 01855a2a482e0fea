"""Shared test set-up: the FER2013 faces of the session, the ``shared_data`` marker, and
Hypothesis's files kept in pytest's temporary folder (never in the checkout)."""

from __future__ import annotations

import os
import tarfile

import pytest

import fer_data


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # After pytest's own set-up of its temporary folder (trylast); Hypothesis writes its example
    # database and the constants it collects from the code there instead of ./.hypothesis.
    from hypothesis import configuration

    configuration.set_hypothesis_home_dir(config._tmp_path_factory.getbasetemp() / "hypothesis")


def pytest_collection_modifyitems(config, items):
    if fer_data.SHARED_ROOT.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs {fer_data.SHARED_ROOT}")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def fer_root(tmp_path_factory):
    """FER2013 faces: the shared dataset, or the repository's sample extracted into pytest's
    temporary folder (never anywhere else)."""
    if fer_data.FULL_FER_AVAILABLE:
        root = fer_data.SHARED_FER_ROOT
    else:
        target = tmp_path_factory.mktemp("fer_sample")
        with tarfile.open(fer_data.SAMPLE_ARCHIVE) as archive:
            # The archive is the repository's own; the data filter still refuses anything unsafe.
            archive.extractall(target, filter="data")
        root = next(path.parent for path in target.rglob("val") if path.is_dir())
    os.environ[fer_data.ROOT_VARIABLE] = str(root)
    return root
