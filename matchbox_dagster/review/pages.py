"""The app's HTML, rendered on the server: no CDN, one small inline script, works offline."""

from __future__ import annotations

from collections import Counter
from html import escape

import polars as pl

from matchbox_dagster.evaluation.sampling import EvalSample, Strategy

STYLE = """
body{font:14px system-ui,sans-serif;margin:0;color:#222}
header{background:#1f3a5f;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
header a{color:#fff}main{padding:12px 16px}
.msg{padding:8px 12px;margin:8px 0;border-radius:4px}
.error{background:#fde2e1;border:1px solid #d33}.ok{background:#e3f6e3;border:1px solid #3a3}
table.recs{border-collapse:collapse;margin:8px 0}
table.recs td,table.recs th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
td.diff{background:#fff3b0;font-weight:600}
th.rec{cursor:pointer}th.rec.focus{outline:3px solid #1f6feb}
.g{display:inline-block;min-width:1.6em;padding:1px 4px;border-radius:3px;color:#fff;
text-align:center}
.g1{background:#2e7d32}.g2{background:#c62828}.g3{background:#1565c0}.g4{background:#6a1b9a}
.g5{background:#ef6c00}.g6{background:#00838f}.g7{background:#5d4037}.g8{background:#455a64}
.g9{background:#ad1457}
button{margin:2px}kbd{border:1px solid #999;border-radius:3px;padding:0 3px;background:#eee}
.bar{background:#eee;width:300px;height:10px;display:inline-block}
.bar span{background:#2e7d32;height:10px;display:block}
"""

SCRIPT = """
(function(){
  const cols=[...document.querySelectorAll('th.rec')];
  if(!cols.length) return;
  let focus=0;
  function paint(){
    cols.forEach((c,i)=>{
      c.classList.toggle('focus',i===focus);
      const leaf=c.dataset.leaf, g=document.getElementById('g-'+leaf).value;
      const badge=c.querySelector('.g'); badge.textContent=g; badge.className='g g'+g;
    });
    const groups=new Set(cols.map(c=>document.getElementById('g-'+c.dataset.leaf).value));
    document.getElementById('verdict').textContent=
      groups.size===1?'one entity (endorse)':groups.size+' entities (split)';
  }
  function set(i,g){document.getElementById('g-'+cols[i].dataset.leaf).value=String(g);paint();}
  window.mbEndorse=()=>{cols.forEach((c,i)=>set(i,1));};
  window.mbSplit=()=>{cols.forEach((c,i)=>set(i,Math.min(i+1,9)));};
  window.mbGroup=(i,g)=>{focus=i;set(i,g);};
  cols.forEach((c,i)=>c.addEventListener('click',e=>{if(e.target.tagName!=='BUTTON'){focus=i;paint();}}));
  document.addEventListener('keydown',e=>{
    if(e.ctrlKey||e.metaKey||e.altKey) return;
    const k=e.key;
    if(k==='ArrowRight'||k==='l'){focus=(focus+1)%cols.length;paint();}
    else if(k==='ArrowLeft'||k==='h'){focus=(focus+cols.length-1)%cols.length;paint();}
    else if(/^[1-9]$/.test(k)){set(focus,Number(k));}
    else if(k==='e'){mbEndorse();}
    else if(k==='s'){mbSplit();}
    else if(k==='Enter'){document.getElementById('judge').submit();}
    else if(k==='n'){document.getElementById('skip').submit();}
    else if(k==='u'){const u=document.getElementById('undo'); if(u) u.submit();}
    else if(k==='v'){location.href=document.getElementById('evallink').href;}
    else return;
    e.preventDefault();
  });
  paint();
})();
"""

KEYS = (
    "<kbd>←</kbd>/<kbd>→</kbd> (or <kbd>h</kbd>/<kbd>l</kbd>) choose a record · "
    "<kbd>1</kbd>–<kbd>9</kbd> put it in a group · <kbd>e</kbd> endorse (all one entity) · "
    "<kbd>s</kbd> split (each its own) · <kbd>Enter</kbd> submit · <kbd>n</kbd> skip · "
    "<kbd>u</kbd> undo my last judgement · <kbd>v</kbd> evaluation"
)


def page(
    title: str, body: str, *, user: str, message: str | None = None, error: bool = False
) -> str:
    """A whole page: header (user, links), an optional message, the body."""
    note = ""
    if message:
        kind = "error" if error else "ok"
        role = "alert" if error else "status"
        note = f'<div class="msg {kind}" role="{role}">{escape(message)}</div>'
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><header><strong>matchbox review</strong>"
        f'<a href="/">collections</a><span>reviewer: <b id="user">{escape(user)}</b></span>'
        "</header>"
        f"<main><h1>{escape(title)}</h1>{note}{body}</main></body></html>"
    )


def collections(names: list[str]) -> str:
    """The list of collections the reviewer may read."""
    if not names:
        return "<p>You may read no collection of this store: nothing to review.</p>"
    items = "".join(
        f'<li><a href="/review/{escape(n)}">{escape(n)}</a> · '
        f'<a href="/evaluation/{escape(n)}">evaluation</a></li>'
        for n in names
    )
    return f"<ul>{items}</ul>"


def _hidden(csrf: str, **values: str) -> str:
    fields = {"csrf": csrf, **values}
    return "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items()
    )


def review(
    collection: str,
    strategy: Strategy,
    current: tuple[str, EvalSample] | None,
    records: pl.DataFrame,
    progress: tuple[int, int],
    csrf: str,
    resolver: str,
) -> str:
    """The review page: the sample's records side by side, the groups, the actions."""
    judged, target = progress
    share = min(100, round(100 * judged / target)) if target else 100
    tabs = " · ".join(
        f"<b>{s.value}</b>" if s is strategy else f'<a href="?strategy={s.value}">{s.value}</a>'
        for s in Strategy
    )
    head = (
        f"<p>Resolver <b>{escape(resolver)}</b> · sampling: {tabs} · "
        f'<a id="evallink" href="/evaluation/{escape(collection)}">evaluation</a></p>'
        f'<p>Progress: <span id="progress">{judged} of {target}</span> judged '
        f'<span class="bar"><span style="width:{share}%"></span></span></p>'
    )
    action = f"/review/{escape(collection)}"
    undo = (
        f'<form id="undo" method="post" action="{action}/undo" style="display:inline">'
        f"{_hidden(csrf, strategy=strategy.value)}"
        '<button type="submit">Undo my last judgement (u)</button></form>'
    )
    if current is None:
        return head + '<p id="empty">Nothing left to judge with this strategy.</p>' + undo
    token, sample = current
    columns = records.columns
    fields = [c for c in columns if c not in ("source", "key", "leaf")]
    leaves = records.get_column("leaf").to_list()
    cells = []
    for i, row in enumerate(records.iter_rows(named=True)):
        buttons = "".join(
            f'<button type="button" title="group {g}" onclick="mbGroup({i},{g})">{g}</button>'
            for g in range(1, 4)
        )
        cells.append(
            f'<th class="rec" data-leaf="{row["leaf"]}">{escape(str(row["source"]))}<br>'
            f'key {escape(str(row["key"]))}<br>group <span class="g g1">1</span><br>{buttons}</th>'
        )
    lines = [f"<tr><th>field</th>{''.join(cells)}</tr>"]
    for name in fields:
        values = ["" if v is None else str(v) for v in records.get_column(name).to_list()]
        present = [v for v in values if v]
        common = Counter(present).most_common(1)[0][0] if present else ""
        tds = "".join(
            f'<td class="{"diff" if v and v != common else ""}">{escape(v)}</td>' for v in values
        )
        lines.append(f"<tr><th>{escape(name)}</th>{tds}</tr>")
    groups = "".join(
        f'<input type="hidden" id="g-{leaf}" name="g-{leaf}" value="1">' for leaf in leaves
    )
    return (
        head
        + f'<p class="reason">Why this sample: {escape(sample.reason)}</p>'
        + f'<table class="recs" id="records">{"".join(lines)}</table>'
        + '<p>Verdict: <b id="verdict"></b></p>'
        + f'<form id="judge" method="post" action="{action}/judge">'
        + _hidden(csrf, sample=token, strategy=strategy.value)
        + groups
        + '<button type="button" onclick="mbEndorse()">Endorse: one entity (e)</button>'
        + '<button type="button" onclick="mbSplit()">Split: each its own (s)</button>'
        + '<button type="submit" id="send">Submit (Enter)</button></form>'
        + f'<form id="skip" method="post" action="{action}/skip" style="display:inline">'
        + _hidden(csrf, sample=token, strategy=strategy.value)
        + '<button type="submit">Skip (n)</button></form>'
        + undo
        + f"<p>{KEYS}</p><script>{SCRIPT}</script>"
    )


__all__ = ["collections", "page", "review"]
