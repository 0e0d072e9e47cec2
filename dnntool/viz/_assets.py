"""CSS and JavaScript of the netscope page, inlined into every HTML file (no CDN, works from file://).

Kept as Python strings so they ship inside the wheel without package-data rules.
"""

CSS = """
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; }
body { display: flex; flex-direction: column; font: 13px/1.4 'Liberation Sans', Arial, Helvetica, sans-serif;
  color: #1d2126; background: #fff; }
header { display: flex; align-items: center; gap: 12px; padding: 6px 12px; border-bottom: 1px solid #d8dce0;
  background: #f4f6f8; flex: none; }
header h1 { font-size: 15px; margin: 0; white-space: nowrap; }
header .sub { color: #5b626b; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; flex: 1; }
header input { width: 240px; padding: 3px 6px; font: inherit; border: 1px solid #b9c0c7; border-radius: 4px; }
header button { font: inherit; padding: 2px 9px; border: 1px solid #b9c0c7; border-radius: 4px; background: #fff;
  cursor: pointer; }
#search-info { color: #5b626b; min-width: 70px; }
main { flex: 1; display: flex; min-height: 0; }
#canvas { flex: 1; position: relative; overflow: hidden; background: #fbfcfd; cursor: grab; touch-action: none; }
#canvas.dragging { cursor: grabbing; }
#graph { width: 100%; height: 100%; display: block; user-select: none; }
aside { width: 390px; flex: none; overflow: auto; border-left: 1px solid #d8dce0; padding: 8px 12px; }
aside h2 { font-size: 14px; margin: 10px 0 6px; }
aside details > summary { font-weight: bold; cursor: pointer; margin: 10px 0 6px; }
table { border-collapse: collapse; width: 100%; }
td, th { padding: 2px 6px 2px 0; vertical-align: top; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.kv th { color: #5b626b; font-weight: normal; width: 90px; }
.totals th { width: 125px; white-space: nowrap; }
.layer { border-top: 1px solid #e3e6e9; padding-top: 6px; margin-top: 6px; }
.layer h3 { font-size: 13px; margin: 0; word-break: break-all; }
.layer .type { color: #5b626b; margin-bottom: 4px; }
pre { background: #f4f6f8; border: 1px solid #e3e6e9; padding: 6px; margin: 4px 0; font-size: 11px;
  overflow-x: auto; white-space: pre; }
.hint { color: #7a7f87; }
.legend span { display: inline-block; margin: 0 10px 4px 0; white-space: nowrap; }
.legend i { display: inline-block; width: 12px; height: 12px; border: 1px solid; border-radius: 3px;
  vertical-align: -2px; margin-right: 4px; }
g.node { cursor: pointer; }
g.node:hover rect { stroke-width: 2.2; }
g.node.match rect { stroke: #ff7f0e; stroke-width: 3; }
g.node.selected rect { stroke: #d62728; stroke-width: 3.5; }
path.edge.hl { stroke: #d62728; stroke-width: 2.2; }
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("netscope-data").textContent);
  var canvas = document.getElementById("canvas");
  var vp = document.getElementById("viewport");
  var title = document.getElementById("details-title");
  var body = document.getElementById("details-body");
  var search = document.getElementById("search");
  var info = document.getElementById("search-info");
  var view = { s: 1, x: 0, y: 0 };
  var pinned = -1, shown = -1, matches = [], matchAt = -1, drag = null, dragged = false;
  var els = [], edgesOf = [];
  document.querySelectorAll("#graph g.node").forEach(function (g) { els[+g.getAttribute("data-node")] = g; });
  document.querySelectorAll("#graph path.edge").forEach(function (p) {
    ["data-src", "data-dst"].forEach(function (a) {
      var i = +p.getAttribute(a);
      (edgesOf[i] = edgesOf[i] || []).push(p);
    });
  });

  function apply() {
    vp.setAttribute("transform", "translate(" + view.x.toFixed(2) + "," + view.y.toFixed(2) +
      ") scale(" + view.s.toFixed(5) + ")");
  }
  function clamp(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }
  function zoomAt(mx, my, k) {
    var s = clamp(view.s * k, 0.02, 8);
    view.x = mx - (mx - view.x) * s / view.s;
    view.y = my - (my - view.y) * s / view.s;
    view.s = s;
    apply();
  }
  function fit(whole) {
    var r = canvas.getBoundingClientRect();
    var s = Math.min(r.width / data.width, whole ? r.height / data.height : 1);
    view.s = clamp(s, 0.02, 8);
    view.x = (r.width - data.width * view.s) / 2;
    view.y = whole ? (r.height - data.height * view.s) / 2 : 0;
    apply();
  }
  function centre(i) {
    var n = data.nodes[i], r = canvas.getBoundingClientRect();
    if (view.s < 0.5) { view.s = 1; }
    view.x = r.width / 2 - n.cx * view.s;
    view.y = r.height / 2 - n.cy * view.s;
    apply();
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function row(table, key, value) {
    var tr = el("tr");
    tr.appendChild(el("th", "", key));
    tr.appendChild(el("td", "", value));
    table.appendChild(tr);
  }
  function blobs(list) {
    return list.map(function (b) { return b[0] + "  " + b[1]; }).join("\n") || "-";
  }
  function show(i) {
    shown = i;
    body.textContent = "";
    if (i < 0) {
      title.textContent = "Layer";
      body.appendChild(el("p", "hint", "Hover over a node, or click it to keep its details here."));
      return;
    }
    var n = data.nodes[i];
    title.textContent = n.layers.length > 1 ? n.layers[0].name + " (+" + (n.layers.length - 1) + " in place)" :
      n.layers[0].name;
    if (n.layers.length > 1) {
      var t = el("table", "kv");
      row(t, "layers", n.layers.map(function (l) { return l.name; }).join(", "));
      row(t, "params", n.params);
      row(t, "MACs", n.macs);
      body.appendChild(t);
    }
    n.layers.forEach(function (l) {
      var d = el("div", "layer");
      d.appendChild(el("h3", "", l.name));
      d.appendChild(el("div", "type", l.type + (l.summary ? "  " + l.summary : "")));
      var t = el("table", "kv");
      row(t, "bottoms", blobs(l.bottoms));
      row(t, "output shape", blobs(l.tops));
      row(t, "params", l.params);
      if (l.stored) { row(t, "stored", l.stored); }
      row(t, "MACs", l.macs);
      row(t, "FLOPs", l.flops);
      row(t, "activations", l.act);
      t.querySelectorAll("td").forEach(function (td) { td.style.whiteSpace = "pre-wrap"; });
      d.appendChild(t);
      d.appendChild(el("pre", "", l.proto));
      body.appendChild(d);
    });
  }
  function select(i) {
    if (pinned >= 0 && els[pinned]) {
      els[pinned].classList.remove("selected");
      (edgesOf[pinned] || []).forEach(function (p) { p.classList.remove("hl"); });
    }
    pinned = i;
    if (i >= 0) {
      els[i].classList.add("selected");
      (edgesOf[i] || []).forEach(function (p) { p.classList.add("hl"); });
    }
    show(i);
  }
  function nodeOf(target) {
    var g = target && target.closest ? target.closest("g.node") : null;
    return g ? +g.getAttribute("data-node") : -1;
  }

  function find(text) {
    var q = text.trim().toLowerCase();
    matches.forEach(function (i) { els[i].classList.remove("match"); });
    matches = [];
    matchAt = -1;
    if (!q) { info.textContent = ""; return; }
    var exact = [], partial = [];
    data.nodes.forEach(function (n, i) {
      var hit = 0;
      n.layers.forEach(function (l) {
        var name = l.name.toLowerCase();
        if (name === q) { hit = 2; } else if (!hit && name.indexOf(q) >= 0) { hit = 1; }
      });
      if (hit === 2) { exact.push(i); } else if (hit === 1) { partial.push(i); }
    });
    matches = exact.concat(partial);
    matches.forEach(function (i) { els[i].classList.add("match"); });
    info.textContent = matches.length ? matches.length + (matches.length === 1 ? " match" : " matches") :
      "no match";
    if (exact.length) { next(); }
  }
  function next() {
    if (!matches.length) { return; }
    matchAt = (matchAt + 1) % matches.length;
    select(matches[matchAt]);
    centre(matches[matchAt]);
    info.textContent = (matchAt + 1) + " / " + matches.length;
  }

  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var r = canvas.getBoundingClientRect();
    var dy = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
    zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-dy * 0.0015));
  }, { passive: false });
  canvas.addEventListener("pointerdown", function (e) {
    if (e.button !== 0) { return; }
    drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y, moved: false };
  });
  window.addEventListener("pointermove", function (e) {
    if (!drag) { return; }
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) > 4) {
      drag.moved = true;
      canvas.classList.add("dragging");
    }
    if (drag.moved) {
      view.x = drag.vx + dx;
      view.y = drag.vy + dy;
      apply();
    }
  });
  window.addEventListener("pointerup", function () {
    dragged = !!(drag && drag.moved);
    drag = null;
    canvas.classList.remove("dragging");
  });
  canvas.addEventListener("click", function (e) {
    if (dragged) { dragged = false; return; }
    var i = nodeOf(e.target);
    select(i === pinned ? -1 : i);
  });
  canvas.addEventListener("mouseover", function (e) {
    var i = nodeOf(e.target);
    if (pinned < 0 && i >= 0 && i !== shown) { show(i); }
  });
  canvas.addEventListener("mouseleave", function () { if (pinned < 0) { show(-1); } });
  search.addEventListener("input", function () { find(search.value); });
  search.addEventListener("keydown", function (e) {
    if (e.key === "Enter") { e.preventDefault(); if (matchAt < 0 && !matches.length) { find(search.value); } next(); }
    if (e.key === "Escape") { search.value = ""; find(""); select(-1); }
  });
  document.addEventListener("keydown", function (e) {
    if (e.target === search) { return; }
    if (e.key === "/") { e.preventDefault(); search.focus(); }
    if (e.key === "Escape") { select(-1); }
    if (e.key === "f") { fit(true); }
  });
  document.getElementById("fit").addEventListener("click", function () { fit(true); });
  document.getElementById("one").addEventListener("click", function () { fit(false); });
  window.addEventListener("resize", function () { apply(); });
  fit(false);
  show(-1);
  window.netscope = { select: select, centre: centre, find: find, view: view };
})();
"""
