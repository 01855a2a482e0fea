"""Image checks: every kind of bad file is rejected with its reason, odd modes are accepted."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from emotion_classifier.image_checks import check_image, check_images

MAX_PIXELS = 10_000


def _save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def _jpeg_bytes(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_good_rgb_jpeg_is_accepted_with_its_size(tmp_path):
    path = tmp_path / "face.jpg"
    path.write_bytes(_jpeg_bytes((40, 30)))
    result = check_image(path, MAX_PIXELS)
    assert result.ok and result.reason == ""
    assert (result.width, result.height, result.mode) == (40, 30, "RGB")
    assert result.note == ""


@pytest.mark.parametrize(
    "name, make, expected_reason",
    [
        ("missing.jpg", None, "missing file"),
        ("empty.jpg", lambda path: path.write_bytes(b""), "empty file"),
        ("truncated.jpg", lambda path: path.write_bytes(_jpeg_bytes((64, 64))[:-200]), "corrupt or truncated image"),
        ("header_only.jpg", lambda path: path.write_bytes(_jpeg_bytes((64, 64))[:400]), "corrupt or truncated image"),
        ("text.jpg", lambda path: path.write_text("subDirectory_filePath,expression\n"), "not an image"),
        ("huge.png", lambda path: _save(Image.new("RGB", (200, 100)), path), "image too large"),
        ("tiff.jpg", lambda path: _save(Image.new("RGB", (20, 20)), path, format="TIFF"), "image format"),
    ],
)
def test_bad_files_are_rejected_with_reason(tmp_path, name, make, expected_reason):
    path = tmp_path / name
    if make is not None:
        make(path)
    result = check_image(path, MAX_PIXELS)
    assert not result.ok
    assert result.reason.startswith(expected_reason), result.reason


def test_animated_gif_is_rejected_but_a_still_gif_is_accepted(tmp_path):
    frames = [Image.new("RGB", (16, 16), (red, 0, 255 - red)) for red in (0, 120, 250)]
    animated = tmp_path / "animated.gif"
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=100, loop=0)
    still = _save(Image.new("L", (16, 16), 90), tmp_path / "still.gif")
    animated_result = check_image(animated, MAX_PIXELS)
    assert not animated_result.ok and animated_result.reason == "animated image (3 frames)"
    assert check_image(still, MAX_PIXELS).ok


@pytest.mark.parametrize(
    "mode, extension, expected_note",
    [
        ("L", "jpg", "grayscale"),
        ("CMYK", "jpg", "CMYK"),
        ("RGBA", "png", "image with alpha channel"),
        ("I;16", "png", "16-bit"),
    ],
)
def test_unusual_modes_are_accepted_and_noted(tmp_path, mode, extension, expected_note):
    path = tmp_path / f"image.{extension}"
    Image.new(mode, (24, 12)).save(path)
    result = check_image(path, MAX_PIXELS)
    assert result.ok, result.reason
    assert (result.width, result.height) == (24, 12)
    assert result.note.startswith(expected_note), result.note


def test_check_images_in_two_processes_keeps_order(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg_bytes())
    paths = [good, tmp_path / "absent.jpg"] * 3
    results = check_images(paths, MAX_PIXELS, workers=2, chunk_size=2, progress=False)
    assert [result.ok for result in results] == [True, False] * 3
    assert results[1].reason == "missing file"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=2048), keep_header=st.booleans())
def test_check_image_never_raises_on_random_bytes(tmp_path, content, keep_header):
    # Half the cases start with a real JPEG or PNG header so the decoders get past the sniffing.
    if keep_header:
        content = _jpeg_bytes((8, 8))[:64] + content
    path = tmp_path / "random.jpg"
    path.write_bytes(content)
    result = check_image(path, MAX_PIXELS)
    assert isinstance(result.ok, bool)
    assert result.ok or result.reason


def test_special_files_are_named_for_what_they_are_and_never_opened(tmp_path):
    import os
    import threading

    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    results = {}
    # Opening a named pipe would block until a writer comes: run in a thread, never joined forever.
    worker = threading.Thread(target=lambda: results.update(pipe=check_image(pipe, MAX_PIXELS)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert results["pipe"].reason == "not an image file: a named pipe (FIFO), never opened"
    assert check_image("/dev/null", MAX_PIXELS).reason == "not an image file: a device file, never opened"
    assert check_image(tmp_path, MAX_PIXELS).reason == "not an image file: a folder, never opened"
    assert check_image(tmp_path / "absent.jpg", MAX_PIXELS).reason == "missing file"
