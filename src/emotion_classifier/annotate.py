"""Drawing results: labelled face boxes on photos and video frames, and the contact sheet."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from emotion_classifier import files
from emotion_classifier.detectors import FaceBox

# One colour per canonical class position (more classes reuse them), chosen to be told apart.
BOX_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (120, 120, 120), (255, 255, 255), (170, 68, 153), (68, 170, 153),
)
# Annotated copies of smaller photos are enlarged to this side so that the labels stay legible.
MINIMUM_ANNOTATED_SIDE = 256
JPEG_QUALITY = 90
CONTACT_SHEET_TILE = 112
CONTACT_SHEET_MAX_FACES = 400
CAPTION_HEIGHT = 30


def top_class(classes: list[str], probabilities: np.ndarray) -> tuple[str, float, int]:
    """The most probable class: its name, probability and index."""
    index = int(np.argmax(probabilities))
    return classes[index], float(probabilities[index]), index


@functools.lru_cache(maxsize=16)
def _font(size: int):
    return ImageFont.load_default(size=size)


def draw_faces(image: Image.Image, labels: list[tuple[FaceBox | None, str, int]], scale: int = 1) -> Image.Image:
    """Draw each ``(box, text, class index)`` on ``image`` (in place): a box coloured by the
    class with its text above it; a ``None`` box frames the whole image. Boxes are in the
    pixels of the image before it was enlarged ``scale`` times."""
    draw = ImageDraw.Draw(image)
    line_width = max(2, round(max(image.size) / 300))
    font = _font(max(12, round(max(image.size) / 40)))
    for box, text, index in labels:
        colour = BOX_COLOURS[index % len(BOX_COLOURS)]
        if box is None:
            corners = (0, 0, image.width - 1, image.height - 1)
        else:
            corners = (box.x * scale, box.y * scale, (box.x + box.width) * scale - 1, (box.y + box.height) * scale - 1)
        draw.rectangle(corners, outline=colour, width=line_width)
        if box is not None:
            for _name, x, y in box.landmarks[:2]:
                radius = line_width
                draw.ellipse((x * scale - radius, y * scale - radius, x * scale + radius, y * scale + radius), fill=colour)
        text_box = draw.textbbox((0, 0), text, font=font)
        text_height = text_box[3] - text_box[1] + 4
        # The label sits above the box, or inside it when the box touches the image's top.
        text_top = corners[1] - text_height if corners[1] >= text_height else corners[1] + line_width
        draw.rectangle((corners[0], text_top, corners[0] + text_box[2] + 6, text_top + text_height), fill=colour)
        draw.text((corners[0] + 3, text_top + 1), text, fill=(0, 0, 0), font=font)
    return image


def annotated_photo(photo: np.ndarray, labels: list[tuple[FaceBox | None, str, int]]) -> Image.Image:
    """The photo with its labelled boxes, enlarged first if it is small; "no face found" without any."""
    scale = max(1, math.ceil(MINIMUM_ANNOTATED_SIDE / max(photo.shape[:2])))
    image = Image.fromarray(photo)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    if not labels:
        font = _font(max(12, round(max(image.size) / 40)))
        ImageDraw.Draw(image).text((4, 4), "no face found", fill=(255, 0, 0), font=font, stroke_width=2,
                                   stroke_fill=(0, 0, 0))
        return image
    return draw_faces(image, labels, scale)


def save_jpeg(image: Image.Image, path: Path) -> None:
    with files.atomic_path(path) as temporary:
        image.save(temporary, format="JPEG", quality=JPEG_QUALITY)


def tile(picture: np.ndarray) -> np.ndarray:
    """A face picture enlarged or shrunk to a contact sheet tile, so tight 48-pixel crops are as
    visible as large faces."""
    return np.asarray(ImageOps.contain(Image.fromarray(picture), (CONTACT_SHEET_TILE, CONTACT_SHEET_TILE)))


def write_contact_sheet(path: Path, tiles: list[tuple[np.ndarray, str]]) -> None:
    """All face tiles in a grid, each captioned with its emotion, probability and file."""
    side = CONTACT_SHEET_TILE
    font = _font(11)
    columns = max(1, min(10, math.ceil(math.sqrt(len(tiles)))))
    rows = max(1, math.ceil(len(tiles) / columns))
    sheet = Image.new("RGB", (columns * side, rows * (side + CAPTION_HEIGHT)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if not tiles:
        draw.text((4, 4), "no faces\nfound", fill=(0, 0, 0), font=font)
    for position, (picture, caption) in enumerate(tiles):
        left = (position % columns) * side
        top = (position // columns) * (side + CAPTION_HEIGHT)
        offset_x = (side - picture.shape[1]) // 2
        offset_y = (side - picture.shape[0]) // 2
        sheet.paste(Image.fromarray(picture), (left + offset_x, top + offset_y))
        draw.multiline_text((left + 3, top + side + 2), _fit(caption, side, draw, font), fill=(0, 0, 0), font=font)
    with files.atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")


def _fit(caption: str, width: int, draw: ImageDraw.ImageDraw, font) -> str:
    """Shorten each caption line (from the start, keeping its end) to fit in ``width`` pixels."""
    lines = []
    for line in caption.splitlines():
        while len(line) > 4 and draw.textlength(line, font=font) > width - 6:
            line = "…" + line[2:]
        lines.append(line)
    return "\n".join(lines)
