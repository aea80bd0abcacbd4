"""query --html (lib/retrieval/html.py): one self-contained page, rendered by a real headless Chromium, with
every thumbnail loaded and the photos in rank order; text escaped; unreadable photos named."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from photos import write_photo
from PIL import Image

from lib.retrieval import html

# Planted photos, one pure colour each, given to the page in this rank order.
COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 230), "yellow": (240, 230, 20),
           "magenta": (220, 30, 220), "cyan": (20, 220, 220)}


def chromium():
    """The Chromium executable; the test fails (not skips) without one under CI, where .ci/run installs it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium is missing: .ci/run installs it (apt-get install -y chromium)")
    pytest.skip("Chromium is not installed (apt-get install -y chromium); CI runs this test")


def screenshot(page, out, width=1400, height=1100):
    """Render `page` offline in headless Chromium -> the screenshot as an (H, W, 3) uint8 array."""
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--allow-file-access-from-files", f"--window-size={width},{height}", f"--screenshot={out}",
                    f"file://{page}"], check=True, capture_output=True, timeout=120)
    return np.array(Image.open(out).convert("RGB"))


def first_pixel(shot, colour, tolerance=45, min_pixels=400):
    """(row, column) of the top-left of the area of `colour` in the screenshot, None when it is absent."""
    close = (np.abs(shot.astype(int) - np.array(colour)).max(axis=2) <= tolerance)
    if close.sum() < min_pixels:
        return None
    rows, columns = np.nonzero(close)
    top = rows.min()
    return int(top), int(columns[rows == top].min())


@pytest.fixture
def planted(tmp_path):
    folder = tmp_path / "album"
    paths = [write_photo(str(folder / f"{name}.png"), colour, size=(90, 120)) for name, colour in COLOURS.items()]
    hits = [html.PageHit(rank, 1.0 - 0.1 * rank, os.path.relpath(path, folder), path)
            for rank, path in enumerate(paths, start=1)]
    return folder, hits


def test_page_renders_every_thumbnail_in_rank_order(planted, tmp_path):
    _, hits = planted
    sections = [html.PageSection("first query", None, hits[:3], 0.01),
                html.PageSection("second query", None, hits[3:], 0.02)]
    page = tmp_path / "out" / "page.html"
    page.parent.mkdir()
    html.write_results_page(str(page), sections, "test page", 6)
    shot = screenshot(str(page), str(tmp_path / "shot.png"))
    corners = [first_pixel(shot, colour) for colour in COLOURS.values()]
    assert None not in corners, dict(zip(COLOURS, corners))  # every thumbnail loaded and shows its colour
    assert sorted(range(len(corners)), key=lambda k: corners[k]) == list(range(len(corners)))
    assert corners[0][0] == corners[1][0] == corners[2][0]  # one query's hits side by side
    assert corners[3][0] > corners[2][0]  # the second query below the first


def test_page_is_self_contained_and_lists_rank_score_path(planted, tmp_path):
    folder, hits = planted
    text = html.results_page([html.PageSection("a dog <b>& a cat</b>", None, hits, 0.5)], "t", 6)
    assert "<b>& a cat</b>" not in text and "a dog &lt;b&gt;&amp; a cat&lt;/b&gt;" in text
    assert re.findall(r'data-rank="(\d+)"', text) == ["1", "2", "3", "4", "5", "6"]
    assert text.count('src="data:image/jpeg;base64,') == 6
    assert "http" not in text and "src=\"file" not in text and "<script" not in text
    for hit in hits:
        assert f"{hit.score:.4f}" in text and hit.item in text
    shutil.rmtree(folder)  # the page does not need the photos any more
    assert "(not readable)" in html.results_page([html.PageSection("q", None, hits[:1], 0.1)], "t", 6)


def test_a_query_photo_heads_its_section(planted):
    _, hits = planted
    text = html.results_page([html.PageSection("photo", hits[0].photo, [html.PageHit(1, 0.5, "a caption", None)],
                                               0.1)], "t", 1)
    assert text.count("<img") == 1 and 'class="query"' in text and "a caption" in text
