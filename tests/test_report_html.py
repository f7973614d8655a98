"""report.html in a real headless browser (Debian's chromium): the page sorts and filters from the state
in its URL hash, and what the browser shows after its script ran is checked row by row. The browser is
installed here when missing (apt-get, as root) or the browser tests are skipped with one line."""

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pandas as pd
import pyarrow as pa
import pytest

from raddist.report_write import write_report

TASKS = (("nih_chestxray14", "multilabel"), ("brain", "multiclass"), ("montgomery", "segmentation"))
BASE = {"dinov2_vitl14": 0.85, "resnet152": 0.75, "vgg19": 0.70}


def _results() -> pd.DataFrame:
    """3 tasks x 3 backbones x (knn, linear, few-shot 1/2/4 shots x 3 draws); vgg19 beats resnet152 on brain."""
    rows = []
    for task, task_type in TASKS:
        metric = "dice" if task_type == "segmentation" else "auroc"
        for backbone, base in BASE.items():
            b = base + (0.1 if (task, backbone) == ("brain", "vgg19") else 0)
            for protocol, d in (("knn", 0.0), ("linear", 0.02)):
                rows.append(dict(task=task, task_type=task_type, backbone=backbone, protocol=protocol, params="{}",
                                 seed=0, metric=metric, value=b + d, ci_low=b + d - 0.03, ci_high=b + d + 0.03))
            for shots in (1, 2, 4):
                for draw in range(3):
                    v = b - 0.2 / shots + 0.01 * draw
                    rows.append(dict(task=task, task_type=task_type, backbone=backbone, protocol="fewshot",
                                     params=json.dumps({"shots": shots, "draw": draw, "probe": "linear"}), seed=0,
                                     metric=metric, value=v, ci_low=v - 0.05, ci_high=v + 0.05))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_report(str(out), {"results": pa.Table.from_pandas(_results()), "cells": []},
                 {"cells_done": 27, "cells_total": 27, "mode": "reference", "device": "cpu"})
    return out


def _browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                       capture_output=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def chromium():
    found = _browser()
    if not found:
        pytest.skip("no chromium: not on PATH and apt-get could not install it (not root, offline or timed out)")
    return found


class _Rows(HTMLParser):
    """The leaderboard's body rows as the browser left them: (hidden, [cell texts])."""

    def __init__(self):
        super().__init__()
        self.rows, self.selects, self._in, self._select = [], {}, False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._in = a.get("id") == "board"
        elif tag == "tr" and self._in:
            self.rows.append(["hidden" in a, []])
        elif tag == "td" and self._in and self.rows:
            self.rows[-1][1].append("")

    def handle_data(self, data):
        if self._in and self.rows and self.rows[-1][1]:
            self.rows[-1][1][-1] += data

    def handle_endtag(self, tag):
        if tag == "table":
            self._in = False


def _shown(chromium, page, hash_=""):
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri() + hash_], capture_output=True, text=True, timeout=60).stdout
    assert 'data-ready="1"' in dom, dom[-2000:]  # the script ran to its end
    parser = _Rows()
    parser.feed(dom)
    visible = [cells for hidden, cells in parser.rows if not hidden and cells]
    return visible, re.search(r'id="shown">([^<]*)<', dom).group(1)


def test_page_is_self_contained(report_dir):
    """Nothing loaded from elsewhere: every image a data URI, every link an anchor, no src/href to a file."""
    page = (report_dir / "report.html").read_text()
    images = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(images) == 4 and all(s.startswith("data:image/png;base64,") for s in images)  # board + 3 few-shot
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))
    assert not re.search(r'(src|href)="(https?:|//|[\w./-]+\.(png|js|css))', page)
    for heading in ("Leaderboard", "Run settings", "Across tasks — mean rank", "brain — few-shot auroc",
                    "Published numbers", "Cost", "How this run differs from the reference study"):
        assert heading in page, heading


def test_browser_filters_and_sorts_from_the_hash(report_dir, chromium):
    page = report_dir / "report.html"
    rows, shown = _shown(chromium, page)
    assert shown == "18 of 18 rows shown" and len(rows) == 18  # 3 tasks x 3 backbones x (knn, linear)
    rows, shown = _shown(chromium, page, "#task=brain&sort=value&dir=desc")
    assert shown == "6 of 18 rows shown"
    assert [(r[2], r[3], r[5]) for r in rows] == [
        ("linear", "dinov2_vitl14", "0.870"), ("knn", "dinov2_vitl14", "0.850"), ("linear", "vgg19", "0.820"),
        ("knn", "vgg19", "0.800"), ("linear", "resnet152", "0.770"), ("knn", "resnet152", "0.750")]
    rows, shown = _shown(chromium, page, "#protocol=knn&modality=DX&sort=backbone&dir=asc")
    assert shown == "6 of 18 rows shown"  # brain has no catalogue modality; nih and montgomery are DX
    # ties keep the page's order (tasks alphabetical)
    assert [(r[0], r[3]) for r in rows] == [("montgomery", "dinov2_vitl14"), ("nih_chestxray14", "dinov2_vitl14"),
                                            ("montgomery", "resnet152"), ("nih_chestxray14", "resnet152"),
                                            ("montgomery", "vgg19"), ("nih_chestxray14", "vgg19")]
    rows, _ = _shown(chromium, page, "#backbone=vgg19&sort=ci_low&dir=asc")
    assert [float(r[6]) for r in rows] == sorted(float(r[6]) for r in rows) and len(rows) == 6
    assert all(float(r[6]) < float(r[5]) < float(r[7]) for r in rows)  # CI low < value < CI high, shown


def test_page_from_an_object_store_url_shows_the_same(report_dir, chromium, s3_bucket, moto_endpoint):
    """Written to S3 (moto) as text/html and opened by the browser from its http URL: the same rows, in
    the same order, as the local file."""
    import urllib.request

    out = f"s3://{s3_bucket}/run"
    write_report(out, {"results": pa.Table.from_pandas(_results()), "cells": []},
                 {"cells_done": 27, "cells_total": 27, "mode": "reference", "device": "cpu"})
    url = f"{moto_endpoint}/{s3_bucket}/run/report.html"
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/html")
    view = "#modality=DX&sort=value&dir=asc"
    remote = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                             "--dump-dom", url + view], capture_output=True, text=True, timeout=60).stdout
    parser = _Rows()
    parser.feed(remote)
    local, shown = _shown(chromium, report_dir / "report.html", view)
    assert shown == "12 of 18 rows shown" and 'id="shown">12 of 18 rows shown<' in remote
    assert [cells for hidden, cells in parser.rows if not hidden and cells] == local
