"""report.html: one self-contained page beside report.md. It needs no server and loads nothing: CSS and
script inline, figures as base64 PNG, no link to another file, so it opens the same from a local path
and from an object-store URL.

On top, a leaderboard of every task x backbone x protocol (each task's headline metric, value and 95%
CI) that sorts by any column and filters by task, modality, protocol and backbone. The state lives in
the URL's hash (`#task=chest&sort=value&dir=desc`), so a view can be shared as a link and a headless
browser can be pointed at one. Below it, the run's settings and report.md itself (per-task tables and
plots, few-shot curves, the leaderboard across tasks, published numbers, cost, reference-mode
differences), rendered from its Markdown with its images inlined.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Optional

import pandas as pd

from raddist import storage

FILTERS = ("task", "modality", "protocol", "backbone")
COLUMNS = (("task", "task", False), ("modality", "modality", False), ("protocol", "protocol", False),
           ("backbone", "backbone", False), ("metric", "metric", False), ("value", "value", True),
           ("ci_low", "CI low", True), ("ci_high", "CI high", True), ("n", "n", True))
SUMMARY_KEYS = ("name", "state", "mode", "device", "cells_total", "cells_done", "cells_failed", "images_embedded",
                "embedding_jobs_computed", "embedding_jobs_cached", "input_errors", "wall_seconds", "cache")

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f2f2f2}#board th{cursor:pointer;user-select:none}#board td.num{text-align:right;
font-variant-numeric:tabular-nums}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}img{max-width:100%}.filters label{margin-right:1em}
nav a{margin-right:1em}code{background:#f5f5f5;padding:0 3px}
"""

SCRIPT = """
(function(){
  var F=%(filters)s, tbody=document.querySelector('#board tbody'), rows=[].slice.call(tbody.rows);
  rows.forEach(function(r,i){r.dataset.i=i;});
  function state(){var s={};new URLSearchParams(location.hash.slice(1)).forEach(function(v,k){s[k]=v;});return s;}
  function go(change){var s=state(),k;for(k in change)s[k]=change[k];for(k in s)if(!s[k])delete s[k];
    location.hash=new URLSearchParams(s).toString();}
  F.forEach(function(f){var sel=document.getElementById('f-'+f),seen={};
    rows.forEach(function(r){seen[r.dataset[f]]=1;});
    Object.keys(seen).sort().forEach(function(v){var o=document.createElement('option');o.value=v;o.textContent=v;
      sel.appendChild(o);});
    sel.addEventListener('change',function(){var c={};c[f]=sel.value;go(c);});});
  var heads=[].slice.call(document.querySelectorAll('#board th'));
  heads.forEach(function(th){th.addEventListener('click',function(){var s=state(),k=th.dataset.key;
    go({sort:k,dir:(s.sort===k&&s.dir!=='asc')?'asc':(s.sort===k?'desc':(th.dataset.num?'desc':'asc'))});});});
  function key(r,k,num){var c=r.querySelector('td[data-key="'+k+'"]'),v=c?c.dataset.sort:'';
    if(!num)return v;var x=parseFloat(v);return isNaN(x)?null:x;}
  function apply(){var s=state(),shown=0;
    F.forEach(function(f){document.getElementById('f-'+f).value=s[f]||'';});
    rows.forEach(function(r){var ok=F.every(function(f){return !s[f]||r.dataset[f]===s[f];});r.hidden=!ok;
      if(ok)shown++;});
    var th=heads.filter(function(h){return h.dataset.key===s.sort;})[0],order=rows.slice();
    heads.forEach(function(h){h.removeAttribute('aria-sort');});
    if(th){var num=!!th.dataset.num,d=s.dir==='asc'?1:-1;
      th.setAttribute('aria-sort',d>0?'ascending':'descending');
      order.sort(function(a,b){var x=key(a,s.sort,num),y=key(b,s.sort,num);
        if(x===y)return a.dataset.i-b.dataset.i;if(x===null)return 1;if(y===null)return -1;
        return (x<y?-1:1)*d;});}
    else order.sort(function(a,b){return a.dataset.i-b.dataset.i;});
    order.forEach(function(r){tbody.appendChild(r);});
    document.getElementById('shown').textContent=shown+' of '+rows.length+' rows shown';}
  window.addEventListener('hashchange',apply);apply();document.body.dataset.ready='1';
})();
"""


def _leaderboard(rows: pd.DataFrame) -> str:
    heads = "".join(f'<th data-key="{k}"{" data-num=1" if num else ""}>{label}</th>' for k, label, num in COLUMNS)
    body = []
    for _, r in rows.iterrows():
        attrs = " ".join(f'data-{f}="{html.escape(str(r[f] if f != "protocol" else r[f].split(" (")[0]))}"'
                         for f in FILTERS)
        cells = []
        for k, _, num in COLUMNS:
            v = r[k]
            text = "" if pd.isna(v) else (f"{v:.3f}" if num and k != "n" else str(v))
            sort = "" if pd.isna(v) else (repr(float(v)) if num else str(v))
            cells.append(f'<td data-key="{k}" data-sort="{html.escape(sort)}"{" class=num" if num else ""}>'
                         f"{html.escape(text)}</td>")
        body.append(f"<tr {attrs}>{''.join(cells)}</tr>")
    selects = "".join(f'<label>{f} <select id="f-{f}"><option value="">all</option></select></label>' for f in FILTERS)
    return (f'<h2 id="leaderboard">Leaderboard</h2><p>Each task\'s headline metric on test, every protocol; '
            f'value [95% bootstrap CI]; repeats averaged (n). Click a heading to sort.</p>'
            f'<div class="filters">{selects}<span id="shown"></span></div>'
            f'<table id="board"><thead><tr>{heads}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _settings(summary: dict, board: pd.DataFrame) -> str:
    items = [(k, summary[k]) for k in SUMMARY_KEYS if k in summary]
    items += [(f"{f}s", ", ".join(sorted(map(str, board[f].unique())))) for f in ("backbone", "task", "protocol")
              if len(board)]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    changes = "".join(f"<li>{html.escape(str(c.get('line', c)))}</li>" for c in summary.get("changes") or [])
    return (f'<h2 id="settings">Run settings</h2><table>{rows}</table>'
            + (f"<p>Changes since the output's last run:</p><ul>{changes}</ul>" if changes else ""))


def _body(markdown_text: str, images: dict) -> str:
    """report.md as HTML, its images (relative names) replaced by data URIs."""
    import markdown

    def inline(m):
        data = images.get(m.group(2))
        return f"![{m.group(1)}](data:image/png;base64,{base64.b64encode(data).decode()})" if data else ""

    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", inline, markdown_text)
    text = re.sub(r"^# raddist report\n", "", text)
    return markdown.markdown(text, extensions=["tables"])


def page(markdown_text: str, rows: pd.DataFrame, summary: dict, images: Optional[dict] = None) -> str:
    import json

    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (("leaderboard", "leaderboard"), ("settings", "settings"),
                                                          ("report", "per task, cost, reference")))
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>raddist report</title>"
            f"<style>{CSS}</style></head><body><h1>raddist report</h1><nav>{nav}</nav>"
            f"{_leaderboard(rows)}{_settings(summary, rows)}<div id=report>{_body(markdown_text, images or {})}</div>"
            f"<script>{SCRIPT % {'filters': json.dumps(list(FILTERS))}}</script></body></html>")


def write_html(output: str, markdown_text: str, rows: pd.DataFrame, summary: dict) -> str:
    """OUTPUT/report.html, from report.md's text, the leaderboard's rows (report.board_rows) and the
    PNGs report.md names in OUTPUT."""
    names = set(re.findall(r"!\[[^\]]*\]\(([^)\s/]+\.png)\)", markdown_text))
    images = {n: storage.read_bytes(storage.join(output, n)) for n in names if storage.exists(storage.join(output, n))}
    uri = storage.join(output, "report.html")
    data = page(markdown_text, rows, summary, images).encode("utf-8")
    if not storage.is_remote(uri):
        storage.write_bytes(uri, data)
        return uri
    fs, path = storage.filesystem(uri)  # an object store: served as a page, not as a download
    try:
        with fs.open_output_stream(path, metadata={"Content-Type": "text/html; charset=utf-8"}) as f:
            f.write(data)
    except OSError as e:
        raise storage.StorageError(uri, storage.describe(e)) from None
    return uri
