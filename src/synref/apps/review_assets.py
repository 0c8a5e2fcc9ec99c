"""The review page's stylesheet and script (inlined by :mod:`synref.apps.review`).

The script reads the JSON data element ``#synref-data``, builds the page with DOM calls (every
name, id and path is set with ``textContent`` / attributes, never parsed as HTML), and shows the
items in a virtual list: only the rows in view (plus a margin) exist, recycled while scrolling, so
100,000 items scroll like 100. Decisions are one byte per item (``.`` undecided, ``a`` accept,
``r`` reject, ``c`` another class) plus the chosen classes, saved to ``localStorage`` on every
change under a key of the item list.
"""

REVIEW_CSS = r"""
*{box-sizing:border-box}
html,body{height:100%;margin:0}
body{font:14px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2733;background:#f4f6f8;
display:flex;flex-direction:column}
header{background:#fff;border-bottom:1px solid #d7dde3;padding:10px 16px 8px}
h1{font-size:18px;margin:0 12px 0 0;display:inline-block}
.sub{color:#5b6875}
.bar{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;margin-top:8px}
.bar label{display:inline-flex;gap:4px;align-items:center;color:#3b4754}
select,input,button{font:inherit}
select{max-width:180px}
input[type=number]{width:5.2em}
input[type=search]{width:12em}
button{border:1px solid #b8c2cc;background:#fff;border-radius:5px;padding:3px 9px;cursor:pointer}
button:hover{background:#eef2f6}
button.primary{background:#1f6feb;color:#fff;border-color:#1f6feb}
#progress{font-weight:600;margin-left:auto}
#progress .acc{color:#1a7f37}#progress .rej{color:#b42318}#progress .oth{color:#8250df}
#msg{min-height:1.3em;color:#5b6875;margin-top:4px}
#msg.warn{color:#b42318}
#list{flex:1;overflow-y:auto;position:relative;outline:none}
#spacer{position:relative;width:100%}
.row{position:absolute;left:0;right:0;height:92px;display:grid;
grid-template-columns:64px 76px minmax(220px,1fr) 200px 250px;gap:10px;align-items:center;padding:4px 12px;
border-bottom:1px solid #e3e8ed;background:#fff}
.row.cur{outline:2px solid #1f6feb;outline-offset:-2px;background:#f2f7ff}
.row.s-a{background:#eefaf1}.row.s-r{background:#fdf0ef}.row.s-c{background:#f5f0fd}
.row.cur.s-a,.row.cur.s-r,.row.cur.s-c{background:#e8f0ff}
.rank{font-size:12px;color:#5b6875;text-align:right}
.kind{display:inline-block;font-size:11px;border-radius:4px;padding:0 4px;margin-top:3px}
.kind.k0{background:#fff1c2}.kind.k1{background:#e2e8f0}
.thumb{width:72px;height:72px;background-color:#e6e9ec;background-repeat:no-repeat;border-radius:3px;
display:flex;align-items:center;justify-content:center;color:#8a96a3;font-size:11px;text-align:center}
.info{min-width:0}
.info div{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.id{font-weight:600}
.path{color:#6b7785;font-size:12px}
.given{color:#b42318;font-weight:600}.sugg{color:#1a7f37;font-weight:600}.p{color:#3b4754}
.anchors{display:flex;flex-direction:column;gap:3px}
.strip{display:flex;gap:2px;align-items:center}
.strip span{font-size:10px;color:#6b7785;width:50px;text-align:right;padding-right:3px}
.strip i{display:block;width:36px;height:36px;background-color:#e6e9ec;background-repeat:no-repeat;border-radius:2px}
.strip.none::after{content:"no anchors";font-size:11px;color:#8a96a3}
.strip.g i{box-shadow:inset 0 0 0 1px #e4a19b}.strip.s i{box-shadow:inset 0 0 0 1px #8fcf9f}
.acts{display:flex;gap:5px;align-items:center;flex-wrap:wrap}
.st{font-size:12px;min-width:100%;color:#5b6875;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.st.a{color:#1a7f37}.st.r{color:#b42318}.st.c{color:#8250df}
.acts button.on{font-weight:700;box-shadow:inset 0 0 0 2px currentColor}
.acc{color:#1a7f37}.rej{color:#b42318}.oth{color:#8250df}
.overlay{position:fixed;inset:0;background:rgba(20,28,36,.35);display:flex;align-items:center;justify-content:center}
.overlay[hidden]{display:none}
.panel{background:#fff;border-radius:8px;padding:16px 20px;max-width:560px;box-shadow:0 8px 30px rgba(0,0,0,.25)}
.panel h2{font-size:16px;margin:0 0 8px}
.panel table{border-collapse:collapse}
.panel td{padding:2px 10px 2px 0;vertical-align:top}
kbd{border:1px solid #b8c2cc;border-bottom-width:2px;border-radius:4px;padding:0 5px;font:12px monospace;background:#f6f8fa}
#pickinput{width:22em}
.empty{padding:30px;color:#5b6875}
"""

REVIEW_JS = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("synref-data").textContent);
var names = D.classes, I = D.items, n = I.index.length, ROW = 92, THUMB = 72, ANCHOR = 36;
var given = Int32Array.from(I.given), sugg = Int32Array.from(I.sugg), kind = Uint8Array.from(I.kind);
var p = Float64Array.from(I.p, function (x) { return x === null ? NaN : x; });
var gs = Float64Array.from(I.gs, function (x) { return x === null ? NaN : x; });
var DOT = 46, ACC = 97, REJ = 114, OTH = 99;
var dec = new Uint8Array(n).fill(DOT), other = new Int32Array(n).fill(-1);
var KEY = "synref-review:" + D.key, storageOk = true;
var view = new Int32Array(0), cur = 0, pickFor = -1;

function el(tag, attrs, text) {
  var e = document.createElement(tag);
  if (attrs) { for (var k in attrs) { if (k === "class") e.className = attrs[k]; else e.setAttribute(k, attrs[k]); } }
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function fmt(x) { return isNaN(x) ? "n/a" : x.toFixed(3); }
function sheetUrl(list, t) {
  var name = list[Math.floor(t / (D.thumbs.side * D.thumbs.side))];
  return name ? 'url("' + D.thumbs.dir + "/" + name + '")' : "";
}
function paintTile(node, list, t, size) {
  var side = D.thumbs.side, per = side * side, url = t >= 0 ? sheetUrl(list, t) : "";
  if (!url) { node.style.backgroundImage = ""; return false; }
  var k = t % per;
  if (node.style.backgroundImage !== url) node.style.backgroundImage = url;
  node.style.backgroundSize = (side * size) + "px auto";
  node.style.backgroundPosition = (-(k % side) * size) + "px " + (-Math.floor(k / side) * size) + "px";
  return true;
}

/* ------------------------------------------------------------------ storage */
function load() {
  var raw = null;
  try { raw = window.localStorage.getItem(KEY); } catch (e) { storageOk = false; return; }
  if (!raw) return;
  try {
    var o = JSON.parse(raw);
    if (o.v !== 1 || typeof o.d !== "string" || o.d.length !== n) return;
    for (var i = 0; i < n; i++) { var c = o.d.charCodeAt(i); dec[i] = (c === ACC || c === REJ || c === OTH) ? c : DOT; }
    for (var k in o.c) { var pos = +k, cls = +o.c[k]; if (pos >= 0 && pos < n && cls >= 0 && cls < names.length) other[pos] = cls; }
    for (var j = 0; j < n; j++) if (dec[j] === OTH && other[j] < 0) dec[j] = DOT;
  } catch (e) { /* a corrupt entry: start afresh */ }
}
function save() {
  if (!storageOk) return;
  var c = {};
  for (var i = 0; i < n; i++) if (dec[i] === OTH) c[i] = other[i];
  try {
    window.localStorage.setItem(KEY, JSON.stringify({v: 1, d: new TextDecoder("latin1").decode(dec), c: c,
                                                     saved: Date.now()}));
  } catch (e) {
    storageOk = false;
    say("Decisions cannot be kept in this browser (" + e.name + "): download decisions.csv before closing.", true);
  }
}

/* ------------------------------------------------------------------ page */
var root = document.body;
var header = el("header");
var title = el("div");
title.appendChild(el("h1", null, "synref review"));
title.appendChild(el("span", {"class": "sub"}, (D.data ? D.data + " \u2014 " : "") + D.num_samples.toLocaleString() +
  " samples, " + D.num_changed.toLocaleString() + " changed, " + D.num_items.toLocaleString() + " to review" +
  (D.shown < D.num_items ? " (the " + D.shown.toLocaleString() + " most probable shown)" : "")));
header.appendChild(title);

function classSelect(id, label) {
  var s = el("select", {id: id, "aria-label": label});
  s.appendChild(el("option", {value: "-1"}, "any"));
  for (var c = 0; c < names.length; c++) s.appendChild(el("option", {value: String(c)}, names[c]));
  return s;
}
function labelled(text, control) { var l = el("label", null, text); l.appendChild(control); return l; }
function choice(id, label, options) {
  var s = el("select", {id: id, "aria-label": label});
  options.forEach(function (o) { s.appendChild(el("option", {value: o[0]}, o[1])); });
  return s;
}
var fGiven = classSelect("f-given", "given class"), fSugg = classSelect("f-sugg", "suggested class");
var fMin = el("input", {id: "f-pmin", type: "number", min: "0", max: "1", step: "0.05", value: "0"});
var fMax = el("input", {id: "f-pmax", type: "number", min: "0", max: "1", step: "0.05", value: "1"});
var fKind = choice("f-kind", "items", [["all", "changed and flagged"], ["0", "changed only"], ["1", "flagged only"]]);
var fStatus = choice("f-status", "status", [["all", "any status"], ["und", "undecided"], ["dec", "decided"],
  ["a", "accepted"], ["r", "rejected"], ["c", "other class"]]);
var fText = el("input", {id: "f-text", type: "search", placeholder: "id or path contains"});
var fSort = choice("f-sort", "sort", [["p-desc", "probability, high first"], ["p-asc", "probability, low first"],
  ["margin", "p minus given score"], ["index", "row index"], ["given", "given class"], ["sugg", "suggested class"]]);
var bar1 = el("div", {"class": "bar"});
[labelled("given", fGiven), labelled("suggested", fSugg), labelled("p from", fMin), labelled("to", fMax),
 labelled("", fKind), labelled("", fStatus), fText, labelled("sort", fSort)].forEach(function (x) { bar1.appendChild(x); });
var bulkP = el("input", {id: "bulk-p", type: "number", min: "0", max: "1", step: "0.01", value: "0.9"});
var bulkBtn = el("button", {id: "bulk-accept", type: "button"}, "Accept all in view with p \u2265");
var dlBtn = el("button", {id: "download", type: "button", "class": "primary"}, "Download decisions.csv");
var helpBtn = el("button", {id: "help-button", type: "button"}, "Keys (?)");
var clearBtn = el("button", {id: "clear-all", type: "button"}, "Clear all decisions");
var progress = el("div", {id: "progress", role: "status"});
var bar2 = el("div", {"class": "bar"});
[bulkBtn, bulkP, dlBtn, helpBtn, clearBtn, progress].forEach(function (x) { bar2.appendChild(x); });
var msg = el("div", {id: "msg", "aria-live": "polite"});
header.appendChild(bar1); header.appendChild(bar2); header.appendChild(msg);
var list = el("div", {id: "list", tabindex: "0", role: "list"});
var spacer = el("div", {id: "spacer"});
list.appendChild(spacer);
root.appendChild(header); root.appendChild(list);
var empty = el("div", {"class": "empty", hidden: ""}, n ? "No item matches these filters."
  : "Nothing to review: refine changed no label and flagged none.");
list.appendChild(empty);

var help = el("div", {id: "help", "class": "overlay", hidden: ""});
var hp = el("div", {"class": "panel"});
hp.appendChild(el("h2", null, "Keyboard shortcuts"));
var table = el("table");
[["j / \u2193", "next item"], ["k / \u2191", "previous item"], ["PgDn / PgUp", "a page down / up"],
 ["Home / End", "first / last item"], ["a", "accept the suggestion (then next)"], ["r", "reject: keep the given label (then next)"],
 ["c", "choose another class (type its name, Enter)"], ["u / Backspace", "clear the decision"],
 ["n", "next undecided item"], ["/", "search ids and paths"], ["?", "this help"], ["Esc", "close"]].forEach(function (r) {
  var tr = el("tr"), td = el("td");
  r[0].split(" / ").forEach(function (k, i) { if (i) td.appendChild(document.createTextNode(" / ")); td.appendChild(el("kbd", null, k)); });
  tr.appendChild(td); tr.appendChild(el("td", null, r[1])); table.appendChild(tr);
});
hp.appendChild(table);
hp.appendChild(el("p", null, "Decisions are kept in this browser for these results; \u201cDownload decisions.csv\u201d " +
  "saves them for: synref apply OUT --decisions decisions.csv"));
help.appendChild(hp);
root.appendChild(help);

var picker = el("div", {id: "picker", "class": "overlay", hidden: ""});
var pp = el("div", {"class": "panel"});
var pickTitle = el("h2", null, "Another class");
var pickInput = el("input", {id: "pickinput", list: "classlist", autocomplete: "off", "aria-label": "class name"});
var dl = el("datalist", {id: "classlist"});
for (var ci = 0; ci < names.length; ci++) dl.appendChild(el("option", {value: names[ci]}));
var pickOk = el("button", {id: "pick-ok", type: "button", "class": "primary"}, "Set class");
var pickCancel = el("button", {id: "pick-cancel", type: "button"}, "Cancel");
var pickNote = el("div", {"class": "sub"});
[pickTitle, pickInput, dl, el("span", null, " "), pickOk, el("span", null, " "), pickCancel, pickNote].forEach(function (x) { pp.appendChild(x); });
picker.appendChild(pp);
root.appendChild(picker);

function say(text, warn) { msg.textContent = text; msg.className = warn ? "warn" : ""; }

/* ------------------------------------------------------------------ counts */
function updateProgress() {
  var a = 0, r = 0, c = 0;
  for (var i = 0; i < n; i++) { var d = dec[i]; if (d === ACC) a++; else if (d === REJ) r++; else if (d === OTH) c++; }
  var done = a + r + c;
  progress.textContent = "";
  progress.appendChild(document.createTextNode("Decided " + done.toLocaleString() + " / " + n.toLocaleString() +
    " (" + (n ? (100 * done / n).toFixed(1) : "0.0") + "%): "));
  progress.appendChild(el("span", {"class": "acc"}, a.toLocaleString() + " accepted"));
  progress.appendChild(document.createTextNode(", "));
  progress.appendChild(el("span", {"class": "rej"}, r.toLocaleString() + " rejected"));
  progress.appendChild(document.createTextNode(", "));
  progress.appendChild(el("span", {"class": "oth"}, c.toLocaleString() + " other class"));
  progress.appendChild(document.createTextNode(" \u00b7 " + view.length.toLocaleString() + " in view"));
  progress.setAttribute("data-decided", String(done));
}

/* ------------------------------------------------------------------ filter + sort */
var lowerText = null;
function applyFilters(keep) {
  var g = +fGiven.value, s = +fSugg.value, lo = parseFloat(fMin.value), hi = parseFloat(fMax.value);
  if (isNaN(lo)) lo = -Infinity; if (isNaN(hi)) hi = Infinity;
  var kd = fKind.value, st = fStatus.value, q = fText.value.trim().toLowerCase();
  if (q && !lowerText) {
    lowerText = new Array(n);
    for (var t = 0; t < n; t++) lowerText[t] = (I.id[t] + "\n" + I.path[t]).toLowerCase();
  }
  var out = new Int32Array(n), m = 0;
  for (var i = 0; i < n; i++) {
    if (g >= 0 && given[i] !== g) continue;
    if (s >= 0 && sugg[i] !== s) continue;
    var pi = p[i];
    if (!isNaN(pi) && !(pi >= lo && pi <= hi)) continue;  /* no score: never filtered out by p */
    if (kd !== "all" && kind[i] !== +kd) continue;
    if (st !== "all") {
      var d = dec[i];
      if (st === "und" ? d !== DOT : st === "dec" ? d === DOT : d !== st.charCodeAt(0)) continue;
    }
    if (q && lowerText[i].indexOf(q) < 0) continue;
    out[m++] = i;
  }
  var v = out.slice(0, m), key = fSort.value;
  if (key === "p-asc") v.sort(function (a, b) { return (p[a] - p[b]) || (a - b); });
  else if (key === "margin") v.sort(function (a, b) { return ((p[b] - gs[b]) - (p[a] - gs[a])) || (a - b); });
  else if (key === "index") v.sort(function (a, b) { return I.index[a] - I.index[b]; });
  else if (key === "given") v.sort(function (a, b) { return (given[a] - given[b]) || (a - b); });
  else if (key === "sugg") v.sort(function (a, b) { return (sugg[a] - sugg[b]) || (a - b); });
  view = v;  /* "p-desc": the page order already */
  spacer.style.height = (view.length * ROW) + "px";
  empty.hidden = view.length > 0;
  if (!keep) { cur = 0; list.scrollTop = 0; }
  cur = Math.min(cur, Math.max(0, view.length - 1));
  updateProgress();
  render();
}

/* ------------------------------------------------------------------ rows */
var pool = [];
function makeRow() {
  var r = el("div", {"class": "row", role: "listitem"});
  var c1 = el("div", {"class": "rank"}), rank = el("div"), kd = el("span", {"class": "kind"});
  c1.appendChild(rank); c1.appendChild(kd);
  var th = el("div", {"class": "thumb"});
  var info = el("div", {"class": "info"});
  var id = el("div", {"class": "id"}), line = el("div"), path = el("div", {"class": "path"});
  var gName = el("span", {"class": "given"}), sName = el("span", {"class": "sugg"}), pv = el("span", {"class": "p"});
  line.appendChild(document.createTextNode("given ")); line.appendChild(gName);
  line.appendChild(document.createTextNode(" \u2192 ")); line.appendChild(sName);
  line.appendChild(document.createTextNode(" ")); line.appendChild(pv);
  info.appendChild(id); info.appendChild(line); info.appendChild(path);
  var anc = el("div", {"class": "anchors"});
  var sg = el("div", {"class": "strip g", title: "anchors of the given class"}), ss = el("div", {"class": "strip s", title: "anchors of the suggested class"});
  sg.appendChild(el("span", null, "given")); ss.appendChild(el("span", null, "suggested"));
  anc.appendChild(sg); anc.appendChild(ss);
  var acts = el("div", {"class": "acts"});
  var st = el("div", {"class": "st"});
  var bA = el("button", {type: "button", "class": "acc", "data-act": "a", title: "accept (a)"}, "Accept");
  var bR = el("button", {type: "button", "class": "rej", "data-act": "r", title: "reject (r)"}, "Reject");
  var bC = el("button", {type: "button", "class": "oth", "data-act": "c", title: "another class (c)"}, "Other\u2026");
  acts.appendChild(st); acts.appendChild(bA); acts.appendChild(bR); acts.appendChild(bC);
  [c1, th, info, anc, acts].forEach(function (x) { r.appendChild(x); });
  r._ = {rank: rank, kd: kd, th: th, id: id, gName: gName, sName: sName, pv: pv, path: path, sg: sg, ss: ss, st: st,
         bA: bA, bR: bR, bC: bC};
  spacer.appendChild(r);
  return r;
}
function strip(node, cls) {
  var tiles = D.anchors[cls] || [], want = tiles.length;
  node.classList.toggle("none", !want);
  while (node.children.length - 1 > want) node.removeChild(node.lastChild);
  while (node.children.length - 1 < want) node.appendChild(el("i"));
  for (var k = 0; k < want; k++) {
    var box = node.children[k + 1];
    if (k < tiles.length) { box.hidden = false; paintTile(box, D.thumbs.anchor_sheets, tiles[k], ANCHOR); }
    else { box.hidden = true; }
  }
}
function fill(r, pos, rankNo) {
  var x = r._, d = dec[pos];
  r.style.top = (rankNo * ROW) + "px";
  r.setAttribute("data-pos", String(pos));
  r.setAttribute("data-index", String(I.index[pos]));
  r.className = "row" + (rankNo === cur ? " cur" : "") + (d === DOT ? "" : " s-" + String.fromCharCode(d));
  x.rank.textContent = "#" + (rankNo + 1);
  x.kd.textContent = kind[pos] === 0 ? "changed" : "flagged";
  x.kd.className = "kind k" + kind[pos];
  if (!paintTile(x.th, D.thumbs.sheets, I.thumb[pos], THUMB)) x.th.textContent = "no image"; else x.th.textContent = "";
  x.id.textContent = I.id[pos]; x.id.title = I.id[pos];
  x.gName.textContent = names[given[pos]] + " (" + fmt(gs[pos]) + ")";
  x.sName.textContent = names[sugg[pos]];
  x.pv.textContent = "p = " + fmt(p[pos]);
  x.path.textContent = I.path[pos]; x.path.title = I.path[pos];
  strip(x.sg, given[pos]); strip(x.ss, sugg[pos]);
  x.st.className = "st" + (d === DOT ? "" : " " + String.fromCharCode(d));
  x.st.textContent = d === ACC ? "accepted: " + names[sugg[pos]] : d === REJ ? "rejected: keeps " + names[given[pos]]
    : d === OTH ? "other class: " + names[other[pos]] : "undecided";
  x.bA.classList.toggle("on", d === ACC); x.bR.classList.toggle("on", d === REJ); x.bC.classList.toggle("on", d === OTH);
}
var pending = false;
function render() {
  pending = false;
  var top = list.scrollTop, h = list.clientHeight || 800;
  var first = Math.max(0, Math.floor(top / ROW) - 4), last = Math.min(view.length, Math.ceil((top + h) / ROW) + 4);
  var need = last - first;
  while (pool.length < need) pool.push(makeRow());
  for (var k = 0; k < pool.length; k++) {
    var r = pool[k];
    if (k < need) { r.hidden = false; fill(r, view[first + k], first + k); } else r.hidden = true;
  }
}
function schedule() { if (!pending) { pending = true; window.requestAnimationFrame(render); } }
list.addEventListener("scroll", schedule, {passive: true});
window.addEventListener("resize", schedule);

/* ------------------------------------------------------------------ decisions */
function decide(pos, code, cls) {
  if (code === OTH) { other[pos] = cls; } else other[pos] = -1;
  if (code === OTH && cls === given[pos]) code = REJ;        /* the given class again: a rejection */
  else if (code === OTH && cls === sugg[pos]) code = ACC;    /* the suggestion: an acceptance */
  if (code !== OTH) other[pos] = -1;
  dec[pos] = code;
  save(); updateProgress(); render();
}
function scrollToCur() {
  var top = cur * ROW, h = list.clientHeight;
  if (top < list.scrollTop) list.scrollTop = top;
  else if (top + ROW > list.scrollTop + h) list.scrollTop = top + ROW - h;
  render();
}
function move(to) { if (!view.length) return; cur = Math.max(0, Math.min(view.length - 1, to)); scrollToCur(); }
function openPicker(pos) {
  pickFor = pos;
  pickTitle.textContent = "Another class for " + I.id[pos];
  pickNote.textContent = "given: " + names[given[pos]] + ", suggested: " + names[sugg[pos]] +
    ". Type a class name (or its number) and press Enter.";
  pickInput.value = other[pos] >= 0 ? names[other[pos]] : "";
  picker.hidden = false; pickInput.focus();
}
function closePicker() { picker.hidden = true; pickFor = -1; list.focus(); }
function pickClass() {
  var text = pickInput.value.trim(), cls = names.indexOf(text);
  if (cls < 0 && /^\d+$/.test(text) && +text < names.length) cls = +text;
  if (cls < 0) {
    var low = text.toLowerCase(), hits = [];
    for (var c = 0; c < names.length; c++) if (names[c].toLowerCase() === low) hits.push(c);
    if (hits.length === 1) cls = hits[0];
  }
  if (cls < 0) { pickNote.textContent = "No class is named \u201c" + text + "\u201d."; return; }
  var pos = pickFor, wasCur = view[cur] === pos;
  closePicker();
  decide(pos, OTH, cls);
  if (wasCur) move(cur + 1);
}
pickOk.addEventListener("click", pickClass);
pickCancel.addEventListener("click", closePicker);
pickInput.addEventListener("keydown", function (e) {
  if (e.key === "Enter") { e.preventDefault(); pickClass(); }
  else if (e.key === "Escape") { e.preventDefault(); closePicker(); }
});
spacer.addEventListener("click", function (e) {
  var row = e.target.closest(".row"); if (!row) return;
  var pos = +row.getAttribute("data-pos"), rankNo = Math.round(parseFloat(row.style.top) / ROW);
  cur = rankNo;
  var act = e.target.closest("button") ? e.target.closest("button").getAttribute("data-act") : null;
  if (act === "a") decide(pos, ACC, -1);
  else if (act === "r") decide(pos, REJ, -1);
  else if (act === "c") openPicker(pos);
  else render();
});
bulkBtn.addEventListener("click", function () {
  var t = parseFloat(bulkP.value);
  if (isNaN(t)) { say("Give a probability between 0 and 1.", true); return; }
  var k = 0;
  for (var i = 0; i < view.length; i++) { var pos = view[i]; if (dec[pos] === DOT && p[pos] >= t) { dec[pos] = ACC; other[pos] = -1; k++; } }
  save(); updateProgress(); render();
  say("Accepted " + k.toLocaleString() + " undecided item(s) in view with p \u2265 " + t + ".");
});
clearBtn.addEventListener("click", function () {
  if (clearBtn.getAttribute("data-armed") !== "1") {
    clearBtn.setAttribute("data-armed", "1"); clearBtn.textContent = "Click again to clear all";
    setTimeout(function () { clearBtn.setAttribute("data-armed", "0"); clearBtn.textContent = "Clear all decisions"; }, 4000);
    return;
  }
  dec.fill(DOT); other.fill(-1); save(); updateProgress(); render();
  clearBtn.setAttribute("data-armed", "0"); clearBtn.textContent = "Clear all decisions";
  say("All decisions cleared.");
});
[fGiven, fSugg, fKind, fStatus, fSort].forEach(function (c) { c.addEventListener("change", function () { applyFilters(false); }); });
[fMin, fMax].forEach(function (c) { c.addEventListener("change", function () { applyFilters(false); }); });
var textTimer = 0;
fText.addEventListener("input", function () { clearTimeout(textTimer); textTimer = setTimeout(function () { applyFilters(false); }, 200); });

/* ------------------------------------------------------------------ csv */
function cell(v) {
  var s = String(v);
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
function decisionsCsv() {
  var lines = ["index,id,given_label,given_class,suggested_label,suggested_class,p,decision,label,class"];
  for (var i = 0; i < n; i++) {
    var d = dec[i]; if (d === DOT) continue;
    var label = d === ACC ? sugg[i] : d === REJ ? given[i] : other[i];
    var word = d === ACC ? "accept" : d === REJ ? "reject" : "relabel";
    lines.push([I.index[i], cell(I.id[i]), given[i], cell(names[given[i]]), sugg[i], cell(names[sugg[i]]),
                isNaN(p[i]) ? "" : p[i], word, label, cell(names[label])].join(","));
  }
  return lines.join("\r\n") + "\r\n";
}
dlBtn.addEventListener("click", function () {
  var blob = new Blob([decisionsCsv()], {type: "text/csv;charset=utf-8"});
  var a = el("a", {href: URL.createObjectURL(blob), download: "decisions.csv"});
  document.body.appendChild(a); a.click();
  setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  say("decisions.csv: apply it with  synref apply OUT --decisions decisions.csv");
});

/* ------------------------------------------------------------------ keys */
helpBtn.addEventListener("click", function () { help.hidden = !help.hidden; });
help.addEventListener("click", function () { help.hidden = true; });
document.addEventListener("keydown", function (e) {
  var t = e.target, typing = t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA");
  if (e.key === "Escape") { help.hidden = true; if (!picker.hidden) closePicker(); else if (typing) t.blur(); return; }
  if (typing || !picker.hidden || e.ctrlKey || e.metaKey || e.altKey) return;
  var pos = view.length ? view[cur] : -1, page = Math.max(1, Math.floor(list.clientHeight / ROW) - 1);
  switch (e.key) {
    case "j": case "ArrowDown": move(cur + 1); break;
    case "k": case "ArrowUp": move(cur - 1); break;
    case "PageDown": move(cur + page); break;
    case "PageUp": move(cur - page); break;
    case "Home": move(0); break;
    case "End": move(view.length - 1); break;
    case "a": if (pos >= 0) { decide(pos, ACC, -1); move(cur + 1); } break;
    case "r": if (pos >= 0) { decide(pos, REJ, -1); move(cur + 1); } break;
    case "c": if (pos >= 0) openPicker(pos); break;
    case "u": case "Backspace": case "Delete": if (pos >= 0) decide(pos, DOT, -1); break;
    case "n":
      for (var k = 1; k <= view.length; k++) { var q = (cur + k) % view.length; if (dec[view[q]] === DOT) { move(q); break; } }
      break;
    case "/": fText.focus(); break;
    case "?": help.hidden = !help.hidden; break;
    default: return;
  }
  e.preventDefault();
});
window.addEventListener("pagehide", save);

load();
applyFilters(false);
if (!storageOk) say("This browser does not keep decisions for local files: download decisions.csv before closing.", true);
list.focus({preventScroll: true});
window.synrefReview = {ready: true, readyAt: performance.now(), items: n, csv: decisionsCsv};
document.body.setAttribute("data-ready", "1");
})();
"""
