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


FORMULA_CELLS = ["=1+1", "+1", "-x", "@SUM(A1)", "\tTAB", "\rCR", "'=quoted before", "''@two quotes", "plain",
                 "'plain quote", "a=b", ""]


def test_csv_cells_that_would_run_as_formulas_are_quoted_and_numbers_left_alone(tmp_path):
    import pandas as pd

    path = tmp_path / "table.csv"
    frame = pd.DataFrame({"name": FORMULA_CELLS, "valence": [-0.5] * len(FORMULA_CELLS),
                          "count": range(-6, 6)})
    files.save_csv(path, frame)
    written = pd.read_csv(path, dtype=str, keep_default_na=False)
    expected = ["'=1+1", "'+1", "'-x", "'@SUM(A1)", "'\tTAB", "'\rCR", "''=quoted before", "'''@two quotes",
                "plain", "'plain quote", "a=b", ""]
    assert written["name"].tolist() == expected
    assert written["valence"].tolist() == ["-0.5"] * len(FORMULA_CELLS)
    assert pd.read_csv(path)["count"].tolist() == list(range(-6, 6))
    assert [files.restore_csv_text(cell) for cell in written["name"]] == FORMULA_CELLS
    # The caller's frame is left as it was.
    assert frame["name"].tolist() == FORMULA_CELLS


def test_formula_like_column_names_are_quoted_too(tmp_path):
    import pandas as pd

    files.save_csv(tmp_path / "counts.csv", pd.DataFrame({"=evil": [1]}))
    assert (tmp_path / "counts.csv").read_text().splitlines()[0] == "'=evil"


def test_fingerprint_survives_dangling_links_and_undecodable_names(tmp_path):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    (tmp_path / os.fsdecode(b"raw\xffname.jpg")).write_bytes(b"x")
    first = files.tree_fingerprint([tmp_path])
    assert first == files.tree_fingerprint([tmp_path])
