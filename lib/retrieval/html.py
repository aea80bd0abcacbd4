"""`retrieve.py query --html PAGE`: the results as one web page with thumbnails, readable offline.

The page is a single file: each photo is embedded as a small JPEG thumbnail (a data:
URI, at most THUMBNAIL pixels on its longer side), so it can be mailed or moved
alone. Each query is a section with its text (or its photo), then its hits in rank
order, each with rank, score and path (or caption). Photos that cannot be read at
query time show their path and "(not readable)" instead of a thumbnail. No script,
no external style sheet or font.
"""
import base64
import html
import io
import os
from typing import NamedTuple, Optional

from lib.errors import XDimError
from lib.formats.atomic import write_text

THUMBNAIL = 256
JPEG_QUALITY = 85


class PageHit(NamedTuple):
    """One result: rank (1 = best), X-Dim score, the item (a path or a caption), the photo file or None."""
    rank: int
    score: float
    item: str
    photo: Optional[str]


class PageSection(NamedTuple):
    """One query: its text (or a description), its photo file or None, its hits and search time."""
    query: str
    photo: Optional[str]
    hits: list
    seconds: float


def thumbnail_uri(path, size=THUMBNAIL):
    """A data: URI of a JPEG thumbnail of the photo at `path` (longer side at most `size`); None when
    the file cannot be decoded (lib.data.images.read_rgb)."""
    from PIL import Image

    from lib.data.images import read_rgb
    try:
        rgb, _ = read_rgb(path)
    except (XDimError, OSError):
        return None
    image = Image.fromarray(rgb)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
section { margin-bottom: 2.5em; }
h2 { font-size: 1.2em; margin-bottom: 0.2em; }
p.note { color: #666; margin-top: 0; font-size: 0.9em; }
ol.hits { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 12px; }
ol.hits li { width: 260px; }
ol.hits img, img.query { max-width: 256px; max-height: 256px; display: block; }
.rank { font-weight: bold; }
.score, .path { font-family: monospace; font-size: 0.85em; overflow-wrap: anywhere; }
"""


def _photo(path, css_class=None, alt=""):
    """An <img> of the thumbnail of `path`, or a note when it cannot be read."""
    uri = thumbnail_uri(path)
    if uri is None:
        return '<p class="note">(not readable)</p>'
    kind = f' class="{css_class}"' if css_class else ""
    return f'<img{kind} src="{uri}" alt="{html.escape(alt)}">'


def _hit(hit):
    picture = _photo(hit.photo, alt=hit.item) if hit.photo else ""
    return (f'<li data-rank="{hit.rank}">{picture}<div><span class="rank">{hit.rank}.</span> '
            f'<span class="score">{hit.score:.4f}</span></div><div class="path">{html.escape(hit.item)}</div></li>')


def _section(section, gallery_size):
    header = f"<h2>{html.escape(section.query)}</h2>"
    if section.photo:
        header += _photo(section.photo, "query", alt=section.query)
    note = (f'<p class="note">top {len(section.hits)} of {gallery_size}, X-Dim scores, '
            f'{1000 * section.seconds:.0f} ms</p>')
    return f"<section>{header}{note}<ol class=\"hits\">{''.join(_hit(hit) for hit in section.hits)}</ol></section>"


def results_page(sections, title, gallery_size):
    """The whole page as a str: `sections` (list of PageSection) in order, under `title`."""
    body = "".join(_section(section, gallery_size) for section in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def write_results_page(path, sections, title, gallery_size):
    """Write `results_page` to `path` atomically."""
    write_text(path, results_page(sections, title, gallery_size))


def write_hits_page(path, results, photo_folder, query_photo, title, gallery_size):
    """The page of retrieve.py query: results [(query label, Hits, seconds)]; a gallery item is the photo
    `photo_folder`/item when `photo_folder` is given (None: items without pictures)."""
    sections = [PageSection(label, query_photo,
                            [PageHit(hit.rank, hit.score, hit.item,
                                     photo_path(photo_folder, hit.item) if photo_folder else None) for hit in hits],
                            seconds)
                for label, hits, seconds in results]
    write_results_page(path, sections, title, gallery_size)


def photo_path(folder, item):
    """The file of a folder gallery's item (a '/'-separated relative path) under `folder`."""
    return os.path.join(folder, *item.split("/"))
