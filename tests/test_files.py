"""Atomic writes and stage stamps."""

import os

import numpy as np
import pytest

from emotion_classifier import files


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "labels.npy"
    files.save_npy(target, np.arange(3))
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target) as temporary:
            temporary.write_bytes(b"half a file")
            raise KeyboardInterrupt
    np.testing.assert_array_equal(files.load_npy(target), np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["labels.npy"]


def test_object_arrays_are_refused_and_pickles_never_loaded(tmp_path):
    with pytest.raises(ValueError, match="object array"):
        files.save_npy(tmp_path / "bad.npy", np.array([{"a": 1}], dtype=object))
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        files.load_npy(pickled)


def test_stage_stamp_notices_changed_settings_inputs_and_missing_outputs(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.txt").write_text("one")
    output = tmp_path / "out.txt"
    output.write_text("result")
    stamp_path = tmp_path / ".stamp.json"

    stamp = files.StageStamp(stamp_path, {"seed": 1}, [source])
    assert not stamp.is_current()
    stamp.record([output])
    assert files.StageStamp(stamp_path, {"seed": 1}, [source]).is_current()
    assert not files.StageStamp(stamp_path, {"seed": 2}, [source]).is_current()

    (source / "b.txt").write_text("two")
    assert not files.StageStamp(stamp_path, {"seed": 1}, [source]).is_current()
    files.StageStamp(stamp_path, {"seed": 1}, [source]).record([output])
    output.unlink()
    assert not files.StageStamp(stamp_path, {"seed": 1}, [source]).is_current()


def test_json_handles_numpy_values(tmp_path):
    files.write_json(tmp_path / "x.json", {"count": np.int64(3), "values": np.array([0.5])})
    assert files.read_json(tmp_path / "x.json") == {"count": 3, "values": [0.5]}


def test_artifacts_get_ordinary_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        files.write_text(tmp_path / "report.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
