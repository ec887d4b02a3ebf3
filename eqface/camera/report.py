"""What a person looks at after ``eqface stream``: video frames with each tracked face boxed and labelled, and a
contact sheet (PNG) with one row per track — its aligned crops, each with the model's quality and the aggregator's
decision — and the track's final identification."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Decision → colour: merged green, rejected for quality red, for similarity orange, dropped by the client grey,
# duplicate (applied before a reconnect) blue, not answered (yet) white.
COLOURS = {
    "SEEDED": (40, 200, 40),
    "ACCEPTED": (40, 200, 40),
    "RESEEDED": (40, 200, 40),
    "REJECTED_QUALITY": (230, 40, 40),
    "REJECTED_SIMILARITY": (255, 150, 0),
    "DROPPED": (128, 128, 128),
    "DUPLICATE": (60, 120, 255),
    "INVALID": (160, 0, 160),
    None: (255, 255, 255),
}
THUMB = 64
_FONT = ImageFont.load_default()


@dataclass
class Box:
    """One face to draw on a frame."""

    box: np.ndarray
    label: str
    status: str | None


@dataclass
class SheetRow:
    title: str
    crops: list[np.ndarray] = field(default_factory=list)  # thumbnails [THUMB, THUMB, 3]
    captions: list[str] = field(default_factory=list)
    statuses: list[str | None] = field(default_factory=list)


def annotate(frame: np.ndarray, boxes: list[Box], header: str) -> np.ndarray:
    """A copy of ``frame`` with each box drawn in its decision's colour, its label above it, a header line on top."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    for b in boxes:
        x1, y1, x2, y2 = (float(v) for v in b.box)
        colour = COLOURS.get(b.status, COLOURS[None])
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        _label(draw, (x1, max(0.0, y1 - 12)), b.label, colour)
    _label(draw, (4, 4), header, (255, 255, 255))
    return np.asarray(image)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int]) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=_FONT)
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=colour, font=_FONT)


def thumbnail(aligned: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(aligned).resize((THUMB, THUMB), Image.BILINEAR))


def contact_sheet(rows: list[SheetRow], path: Path, per_row: int = 16, title: str = "") -> Path:
    """Writes the sheet: per track a title line, then its crops (``per_row`` a line), each framed in its decision's
    colour with its caption (quality) below; a legend on top."""
    cell_w, cell_h, title_h = THUMB + 6, THUMB + 18, 16
    lines = [
        (r, r.crops[i : i + per_row], r.captions[i : i + per_row], r.statuses[i : i + per_row])
        for r in rows
        for i in range(0, max(len(r.crops), 1), per_row)
    ]
    height = 2 * title_h + sum(title_h * (i == 0) + cell_h for i, *_ in _firsts(lines))
    sheet = Image.new("RGB", (max(per_row * cell_w + 8, 640), height + 8), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), title, fill=(255, 255, 255), font=_FONT)
    x = 4
    for name, colour in (
        ("merged", "ACCEPTED"),
        ("rejected: quality", "REJECTED_QUALITY"),
        ("rejected: similarity", "REJECTED_SIMILARITY"),
        ("dropped by client", "DROPPED"),
        ("duplicate after reconnect", "DUPLICATE"),
    ):
        draw.text((x, title_h + 2), name, fill=COLOURS[colour], font=_FONT)
        x += int(draw.textlength(name, font=_FONT)) + 16
    y = 2 * title_h + 4
    for first, (row, crops, captions, statuses) in _firsts(lines):
        if first:
            draw.text((4, y), row.title, fill=(255, 255, 255), font=_FONT)
            y += title_h
        for k, (crop, caption, status) in enumerate(zip(crops, captions, statuses)):
            cx = 4 + k * cell_w
            draw.rectangle((cx, y, cx + THUMB + 3, y + THUMB + 3), fill=COLOURS.get(status, COLOURS[None]))
            sheet.paste(Image.fromarray(crop), (cx + 2, y + 2))
            draw.text((cx + 2, y + THUMB + 5), caption, fill=(220, 220, 220), font=_FONT)
        y += cell_h
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _firsts(lines: list) -> list[tuple[bool, tuple]]:
    """Each line with whether it is its track's first (where the track's title goes)."""
    out, previous = [], None
    for line in lines:
        out.append((line[0] is not previous, line))
        previous = line[0]
    return out
