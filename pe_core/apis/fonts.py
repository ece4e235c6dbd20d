"""Discovery of local TrueType fonts for the text-rendering simulator."""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pe_core.errors import PrivevoError

if TYPE_CHECKING:  # fontTools loads when fonts are discovered: the gateway never needs it
    from fontTools.ttLib import TTFont

SYSTEM_FONT_DIR = Path("/usr/share/fonts")
DRAWTEXT_FONT_DIRS = (
    "truetype/dejavu",  # fonts-dejavu-core
    "truetype/freefont",  # fonts-freefont-ttf
    "truetype/liberation2",  # fonts-liberation2
    "opentype/comic-neue",  # fonts-comic-neue
    "truetype/fifthhorseman",  # fonts-dkg-handwriting
    "truetype/breip",  # fonts-breip
    "opentype/bwht",  # fonts-bwht
    "opentype/dancingscript",  # fonts-dancingscript
    "truetype/femkeklaver",  # fonts-femkeklaver
    "truetype/humor-sans",  # fonts-humor-sans
    "truetype/klee",  # fonts-klee
    "truetype/rufscript",  # fonts-rufscript
    "truetype/leckerli-one",  # fonts-leckerli-one
    "truetype/sjfonts",  # fonts-sjfonts
    "truetype/yusei-magic",  # fonts-yusei-magic
    "truetype/seto",  # fonts-seto
)
"""The folders, under :data:`SYSTEM_FONT_DIR`, of the Debian packages ``scripts/install-fonts.sh``
installs (the CPU and CUDA images run it too): drawtext's default pool is these, not every font
on the machine, so that a package installed for something else (Chromium pulls in Liberation 1,
whose thin mono digits changed the pool and the renders) changes no run."""
FONT_SUFFIXES = ("*.ttf", "*.otf")
_PROBE_SIZE = 32
# The (platform, encoding) subtables fontTools' getBestCmap tries, in its (and HarfBuzz's) order.
_CMAP_PREFERENCES = ((3, 10), (0, 6), (0, 4), (3, 1), (0, 3), (0, 2), (0, 1), (0, 0))


@dataclass(frozen=True)
class FontInfo:
    """One usable font file.

    Attributes:
        path: absolute path of the .ttf file.
        name: the font's full name (name table ID 4), e.g. "DejaVu Sans Bold".
    """

    path: str
    name: str


def default_font_dirs() -> tuple[Path, ...]:
    """The folders of the fonts ``scripts/install-fonts.sh`` installs (:data:`DRAWTEXT_FONT_DIRS`,
    sorted), then those of the fonts matplotlib ships.

    More fonts, above all handwriting ones (Debian's ``fonts-dkg-handwriting``,
    ``fonts-bwht``, ...), give the simulator more styles to evolve from (Sim-PE draws from
    thousands of fonts); the pool is recorded with every run, since a machine without root may
    lack some of them. Other fonts are used only when given (``font_dirs``, ``font_paths``).
    """
    dirs = [SYSTEM_FONT_DIR / folder for folder in sorted(DRAWTEXT_FONT_DIRS)]
    # find_spec locates matplotlib without paying for its import.
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            dirs.append(Path(location) / "mpl-data" / "fonts" / "ttf")
    return tuple(dirs)


def _covers(font: TTFont, chars: Iterable[str]) -> bool:
    """Whether the font draws each character as itself.

    Symbol fonts map ASCII code points to unrelated glyphs (matplotlib's cmsy10 draws "0" as a
    prime, LastResort draws a placeholder box), so a cmap entry is not enough: the glyph's
    Adobe Glyph List name must also decode to the character ("zero", "uni0030", "zero.alt").
    """
    from fontTools.agl import toUnicode

    chars = list(chars)
    ids = best_cmap_glyph_ids(font, [ord(char) for char in chars])
    if ids is None:
        cmap = font.getBestCmap() or {}
        names = [cmap.get(ord(char)) for char in chars]
    else:
        names = [font.getGlyphName(glyph) if glyph else None for glyph in ids]
    return all(
        name is not None and toUnicode(name) == char
        for char, name in zip(chars, names, strict=True)
    )


def best_cmap_glyph_ids(font: TTFont, codes: Sequence[int]) -> list[int] | None:
    """The glyph ids ``font.getBestCmap()`` maps ``codes`` to (0: none), or None where only
    fontTools can tell.

    getBestCmap decodes the chosen subtable into a dict and names every glyph (reading the cmap
    table also decodes every subtable that shares its data with another): 0.4 s and 160 MB for
    LastResort's format 13 table (all of Unicode), about 1 s for a system's fonts, most of
    building the drawtext pool, which needs ten code points. This reads the raw table, picks
    the subtable getBestCmap would and looks the codes up in it without decoding it, for
    formats 4 and 12/13 (nearly every font), by the rules fontTools 4.68 decodes them with.
    Any other case (another format, a DMAP table, a chosen subtable fontTools would reject)
    returns None, and the caller asks fontTools. Where fontTools reads the table, the ids are
    the ones getBestCmap maps to (tested on every font installed here); a malformed subtable
    that is not chosen is not read here, where fontTools raised and stopped the discovery.
    """
    if "cmap" not in font:
        return [0] * len(codes)  # getBestCmap gives None: no code point is mapped
    if "DMAP" in font or font.reader is None or "cmap" not in font.reader:
        return None
    data = font.reader["cmap"]
    subtables = _cmap_subtables(data)
    if subtables is None:
        return None
    chosen = next((subtables[ids] for ids in _CMAP_PREFERENCES if ids in subtables), None)
    if chosen is None:
        return [0] * len(codes)
    format, offset, length = chosen
    if format == 4:
        return _format_4_glyph_ids(data[offset + 6 : offset + length], codes)
    if format in (12, 13):
        groups = struct.unpack(">L", data[offset + 12 : offset + 16])[0]
        if length != 16 + 12 * groups:
            return None
        return _format_12_13_glyph_ids(data[offset + 16 : offset + length], format, codes)
    return None


def _cmap_subtables(data: bytes) -> dict[tuple[int, int], tuple[int, int, int]] | None:
    """(platform, encoding) -> (format, offset, length) of the first subtable with those ids,
    skipping zero-length ones as fontTools does; None where fontTools would reject the table."""
    if len(data) < 4:
        return None
    _, count = struct.unpack(">HH", data[:4])
    found: dict[tuple[int, int], tuple[int, int, int]] = {}
    for i in range(count):
        entry = data[4 + i * 8 : 12 + i * 8]
        if len(entry) < 8:
            return None
        platform, encoding, offset = struct.unpack(">HHL", entry)
        if offset + 8 > len(data):
            return None
        format = struct.unpack(">H", data[offset : offset + 2])[0]
        if format in (8, 10, 12, 13):
            length = struct.unpack(">L", data[offset + 4 : offset + 8])[0]
        elif format in (14, 15):
            length = struct.unpack(">L", data[offset + 2 : offset + 6])[0]
        else:
            length = struct.unpack(">H", data[offset + 2 : offset + 4])[0]
        if length and offset + length > len(data):
            return None
        if length:
            found.setdefault((platform, encoding), (format, offset, length))
    return found


def _format_4_glyph_ids(body: bytes, codes: Sequence[int]) -> list[int] | None:
    """Format 4 (segment mapping to delta values), as fontTools decodes it: every segment but
    the last (the 0xFFFF sentinel), later segments overriding earlier ones, glyph 0 mapping
    nothing; None where fontTools would reject the table (it checks every segment)."""
    if len(body) < 8 or len(body) % 2:
        return None
    (seg_count_x2,) = struct.unpack(">H", body[:2])
    segs = seg_count_x2 // 2
    words = np.frombuffer(body, dtype=">u2", offset=8).astype(np.int64)
    end, start = words[:segs], words[segs + 1 : 2 * segs + 1]
    delta, range_offset = words[2 * segs + 1 : 3 * segs + 1], words[3 * segs + 1 : 4 * segs + 1]
    glyph_index = words[4 * segs + 1 :]
    if len(range_offset) < segs or segs < 1:
        return None
    used = np.arange(segs - 1)
    end, start, delta, range_offset = end[used], start[used], delta[used], range_offset[used]
    # Code c of segment i reads glyph_index[c + partial[i]] when its range offset is nonzero.
    partial = range_offset // 2 - start + used - segs
    indexed = (range_offset != 0) & (start <= end)
    if np.any(start[indexed] + partial[indexed] < 0) or np.any(
        end[indexed] + partial[indexed] >= len(glyph_index)
    ):
        return None
    ids = []
    for code in codes:
        glyph = 0
        for i in np.flatnonzero((start <= code) & (code <= end)).tolist():
            if range_offset[i] == 0:
                found = (code + int(delta[i])) & 0xFFFF
            else:
                raw = int(glyph_index[code + int(partial[i])])
                found = (raw + int(delta[i])) & 0xFFFF if raw else 0
            glyph = found or glyph
        ids.append(glyph)
    return ids


def _format_12_13_glyph_ids(body: bytes, format: int, codes: Sequence[int]) -> list[int]:
    """Formats 12 and 13 (groups of code points), as fontTools decodes them: ends clamped to
    U+10FFFF, inverted groups and groups starting before the last kept one ends skipped, a
    group onto glyph 0 mapping nothing (format 13) or only from its second code point on
    (format 12), later groups overriding earlier ones."""
    step = 1 if format == 12 else 0
    ids = [0] * len(codes)
    last_end = 0
    for first, last, glyph in struct.iter_unpack(">3L", body):
        last = min(last, 0x10FFFF)
        if first > last or first < last_end:
            continue
        last_end = last
        if glyph == 0:
            if step == 0:
                continue
            first, glyph = first + 1, 1
        for k, code in enumerate(codes):
            if first <= code <= last:
                ids[k] = glyph + (code - first) * step
    return ids


def _draws_ink(path: Path, chars: Iterable[str]) -> bool:
    """Whether every character renders visible pixels (some fonts map digits to empty glyphs)."""
    try:
        face = ImageFont.truetype(str(path), _PROBE_SIZE)
    except OSError:
        return False
    for char in chars:
        canvas = Image.new("L", (2 * _PROBE_SIZE, 2 * _PROBE_SIZE))
        ImageDraw.Draw(canvas).text((_PROBE_SIZE // 2, _PROBE_SIZE // 2), char, fill=255, font=face)
        if canvas.getbbox() is None:
            return False
    return True


def _full_name(font: TTFont, path: Path) -> str:
    name = font["name"].getDebugName(4) if "name" in font else None
    return name or path.stem


def _font_files(dirs: Sequence[Path]) -> list[Path]:
    """The font files under ``dirs``: folder by folder in the order given, each one's files
    sorted by their path inside it, each file once. The order depends on nothing but the
    folders and their contents, not on where they are: sorting absolute paths put matplotlib's
    fonts first in a checkout under /tmp and last under /work, which changed every font index
    (and the audit's canaries) between CI and a developer's machine.
    """
    files: dict[Path, None] = {}
    for folder in dirs:
        if folder.is_dir():
            found = {p for pattern in FONT_SUFFIXES for p in folder.rglob(pattern)}
            for path in sorted(found, key=lambda p: p.relative_to(folder).parts):
                files.setdefault(path.resolve(), None)
    return list(files)


def discover_fonts(
    texts: Sequence[str],
    font_paths: Sequence[str | Path] | None = None,
    font_dirs: Sequence[str | Path] | None = None,
) -> tuple[FontInfo, ...]:
    """Lists the fonts that can draw every character of ``texts``.

    Candidates are ``font_paths`` if given (sorted by path), else the ``.ttf``/``.otf`` files
    anywhere under ``font_dirs`` (default: :func:`default_font_dirs`), folder by folder and
    sorted inside each. Fonts whose full name was already seen are dropped (DejaVu ships both
    with Debian and with matplotlib), so the pool, and with it the meaning of a font index, is
    the same wherever the same files are installed.

    Args:
        texts: every string the simulator may draw; whitespace needs no glyph.
        font_paths: explicit .ttf files; a missing or unreadable file is an error.
        font_dirs: folders to scan when ``font_paths`` is None; missing folders are skipped.

    Returns:
        The usable fonts, in pool order.

    Raises:
        PrivevoError: an explicit font file is missing or unreadable, or no font can draw the
            texts.
    """
    chars = sorted({c for text in texts for c in text if not c.isspace()})
    if font_paths is not None:
        candidates = sorted(Path(p).resolve() for p in font_paths)
        for path in candidates:
            if not path.is_file():
                raise PrivevoError(f"font file {str(path)!r} does not exist")
    else:
        dirs = [Path(d) for d in (font_dirs if font_dirs is not None else default_font_dirs())]
        candidates = _font_files(dirs)
    from fontTools.ttLib import TTFont, TTLibError

    pool: list[FontInfo] = []
    seen: set[str] = set()
    for path in candidates:
        try:
            font = TTFont(str(path), lazy=True)
        except (TTLibError, OSError) as exc:
            if font_paths is not None:
                raise PrivevoError(f"cannot read font file {str(path)!r}: {exc}") from exc
            continue
        with font:
            name = _full_name(font, path)
            # The ink check first: it is cheap, and the cmap check of a font without ink can be
            # slow (0.2 s for one with 59,000 glyph names).
            if name in seen or not _draws_ink(path, chars) or not _covers(font, chars):
                continue
        seen.add(name)
        pool.append(FontInfo(path=str(path), name=name))
    if not pool:
        where = (
            "the given font_paths"
            if font_paths is not None
            else ", ".join(str(d) for d in (font_dirs or default_font_dirs()))
        )
        raise PrivevoError(
            f"no TrueType font in {where} can draw the characters {''.join(chars)!r}; "
            "install fonts (e.g. Debian's fonts-dejavu-core) or pass font_paths"
        )
    return tuple(pool)
