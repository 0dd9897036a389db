/* autointerp feature browser: renders the embedded index JSON and loads per-feature cards from chunks
   (embedded application/json script elements with id chunk-K, or chunks/K.json fetched from the
   same origin). Data is untrusted text: only textContent, createElement and property assignment are
   used here, never HTML parsing of strings. */
(function () {
  "use strict";
  var T0 = performance.now();
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var L = DATA.list;
  var N = L.id.length;
  var NAMES = DATA.score_names;
  var P = DATA.primary_score;
  var CMP = DATA.compare;
  var REASONS = DATA.reasons;
  var ROWH = 26;
  var perf = { list_ms: null, list_at: null, filter_ms: null, card_ms: null, cards_opened: 0 };
  var state = { sortKey: null, sortDir: -1, order: null, cursor: -1, open: -1, showBaselineSim: false };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined) { return ""; }
    if (typeof v !== "number") { return String(v); }
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) { return v.toExponential(2); }
    return v.toFixed(digits === undefined ? 3 : digits);
  }
  function reasonOf(k) { return (k === null || k === undefined) ? null : REASONS[k]; }
  /* A score: the value, or "undefined" with the reason as tooltip (never 0, never NaN). */
  function scoreNode(tag, value, reason) {
    if (value === null || value === undefined) {
      if (!reason || reason === "not scored") { var m = el(tag, "missing", "—"); m.title = "not scored"; return m; }
      var u = el(tag, "undef", "undefined");
      u.title = reason;
      return u;
    }
    var d = el(tag, "num", fmt(value));
    d.title = String(value);
    return d;
  }
  function scoreObjNode(tag, s) { return s ? scoreNode(tag, s.value, s.reason || "undefined") : scoreNode(tag, null, null); }
  function ciText(g) {
    if (!g || g.mean === null || g.mean === undefined) { return "undefined"; }
    return fmt(g.mean) + (g.ci ? " [" + fmt(g.ci[0]) + ", " + fmt(g.ci[1]) + "]" : "");
  }

  /* ---------------------------------------------------------------- chunks (card data) */
  var chunkCache = new Map();
  var CHUNK_KEEP = 16;
  function loadChunk(k) {
    if (chunkCache.has(k)) {
      var hit = chunkCache.get(k);
      chunkCache.delete(k); chunkCache.set(k, hit);  /* most recently used last */
      return hit;
    }
    var p;
    var inline = document.getElementById("chunk-" + k);
    if (inline) {
      p = Promise.resolve(JSON.parse(inline.textContent));
    } else {
      p = fetch("chunks/" + k + ".json", { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) { throw new Error("chunks/" + k + ".json: HTTP " + r.status); }
        return r.json();
      });
    }
    p.catch(function () { chunkCache.delete(k); });
    chunkCache.set(k, p);
    while (chunkCache.size > CHUNK_KEEP) { chunkCache.delete(chunkCache.keys().next().value); }
    return p;
  }
  function cardOf(i) {
    var cs = DATA.chunk_size;
    return loadChunk(Math.floor(i / cs)).then(function (arr) { return arr[i % cs]; });
  }

  /* ---------------------------------------------------------------- list columns */
  var oneSource = DATA.sources.length === 1;
  var lowerLabel = new Array(N), lowerId = new Array(N);
  for (var q = 0; q < N; q++) {
    lowerLabel[q] = (L.label[q] || "").toLowerCase();
    lowerId[q] = L.id[q].toLowerCase();
  }
  var COLUMNS = [
    { key: "feature", title: oneSource ? "index" : "feature", kind: "text", w: oneSource ? "70px" : "190px",
      get: function (i) { return oneSource && L.index[i] !== null ? L.index[i] : L.id[i]; } },
    { key: "label", title: "label", kind: "text", w: "minmax(160px, 1fr)", get: function (i) { return L.label[i]; } }
  ];
  NAMES.forEach(function (n) {
    COLUMNS.push({ key: "s:" + n, title: n, kind: "score", w: "88px",
                   get: function (i) { return L.scores[n][i]; }, reason: function (i) { return reasonOf(L.reason[n][i]); } });
  });
  if (P) {
    COLUMNS.push({ key: "b:" + P, title: "baseline " + P, kind: "score", w: "88px", cls: "baseline-col",
                   get: function (i) { return L.baseline[P][i]; }, reason: function (i) { return reasonOf(L.baseline_reason[P][i]); } });
  }
  COLUMNS.push({ key: "frequency", title: "firing rate", kind: "num", w: "84px", get: function (i) { return L.freq[i]; } });
  COLUMNS.push({ key: "max", title: "max act", kind: "num", w: "72px", get: function (i) { return L.max[i]; } });
  if (CMP && P && CMP.scores[P]) {
    COLUMNS.push({ key: "d:" + P, title: "Δ " + P + " vs " + CMP.name, kind: "num", w: "96px",
                   get: function (i) { var a = L.scores[P][i], b = CMP.scores[P][i]; return (a === null || b === null) ? null : a - b; } });
  }
  var GRID = COLUMNS.map(function (c) { return c.w; }).join(" ");
  var KEYS = { frequency: function (i) { return L.freq[i]; }, freq: function (i) { return L.freq[i]; },
               max: function (i) { return L.max[i]; }, index: function (i) { return L.index[i]; } };
  NAMES.forEach(function (n) {
    KEYS[n] = function (i) { return L.scores[n][i]; };
    KEYS["baseline_" + n] = function (i) { return L.baseline[n][i]; };
  });

  /* ---------------------------------------------------------------- filter and sort */
  function parseQuery(text) {
    var terms = [], conds = [], errors = [];
    text.trim().split(/\s+/).forEach(function (tok) {
      if (!tok) { return; }
      var m = /^([A-Za-z_][\w.]*)(<=|>=|<|>|=)(-?[\d.]+(?:e-?\d+)?)$/.exec(tok);
      if (m) {
        if (!KEYS[m[1]]) { errors.push("unknown field " + m[1]); return; }
        conds.push({ get: KEYS[m[1]], op: m[2], v: parseFloat(m[3]) });
      } else { terms.push(tok.toLowerCase()); }
    });
    return { terms: terms, conds: conds, errors: errors };
  }
  function test(op, a, b) {
    if (a === null || a === undefined) { return false; }
    return op === "<" ? a < b : op === ">" ? a > b : op === "<=" ? a <= b : op === ">=" ? a >= b : a === b;
  }
  function applyFilter() {
    var t = performance.now();
    var query = parseQuery(document.getElementById("filter").value);
    var src = document.getElementById("source-filter").value;
    var srcIdx = src === "" ? -1 : parseInt(src, 10);
    var out = new Int32Array(N), k = 0;
    outer: for (var i = 0; i < N; i++) {
      if (srcIdx >= 0 && L.source[i] !== srcIdx) { continue; }
      for (var a = 0; a < query.terms.length; a++) {
        var term = query.terms[a];
        if (lowerLabel[i].indexOf(term) < 0 && lowerId[i].indexOf(term) < 0) { continue outer; }
      }
      for (var b = 0; b < query.conds.length; b++) {
        var c = query.conds[b];
        if (!test(c.op, c.get(i), c.v)) { continue outer; }
      }
      out[k++] = i;
    }
    var order = out.slice(0, k);
    if (state.sortKey) { order = sortOrder(order); }
    state.order = order;
    state.cursor = state.open >= 0 ? order.indexOf(state.open) : -1;
    renderList();
    var count = document.getElementById("count");
    count.textContent = k + " of " + N + " features" + (query.errors.length ? " (" + query.errors.join("; ") + ")" : "");
    count.classList.toggle("undef", query.errors.length > 0);
    perf.filter_ms = performance.now() - t;
  }
  function sortOrder(order) {
    var col = COLUMNS.filter(function (c) { return c.key === state.sortKey; })[0];
    if (!col) { return order; }
    var dir = state.sortDir;
    var arr = Array.prototype.slice.call(order);
    if (col.kind === "text") {
      var vals = {};
      arr.forEach(function (i) { var v = col.get(i); vals[i] = v === null || v === undefined ? null : String(v); });
      var coll = new Intl.Collator(undefined, { numeric: true });
      arr.sort(function (x, y) {
        var a = vals[x], b = vals[y];
        if (a === null && b === null) { return x - y; }
        if (a === null) { return 1; }
        if (b === null) { return -1; }
        return coll.compare(a, b) * dir || x - y;
      });
    } else {
      var key = new Float64Array(N);
      arr.forEach(function (i) { var v = col.get(i); key[i] = (v === null || v === undefined) ? NaN : v; });
      arr.sort(function (x, y) {
        var a = key[x], b = key[y];
        var na = a !== a, nb = b !== b;  /* undefined values sort last in both directions */
        if (na || nb) { return na && nb ? x - y : (na ? 1 : -1); }
        return (a - b) * dir || x - y;
      });
    }
    return Int32Array.from(arr);
  }

  /* ---------------------------------------------------------------- list rendering (virtual) */
  function renderHead() {
    var head = document.getElementById("list-head");
    head.textContent = "";
    head.style.gridTemplateColumns = GRID;
    COLUMNS.forEach(function (col) {
      var h = el("div", "cell th " + (col.cls || ""), col.title.replace(/_/g, "_\u200b"));
      h.dataset.key = col.key;
      h.tabIndex = 0;
      h.title = "sort by " + col.title;
      h.setAttribute("role", "columnheader");
      if (state.sortKey === col.key) {
        h.classList.add(state.sortDir > 0 ? "sorted-asc" : "sorted-desc");
        h.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
      }
      function sort() {
        if (state.sortKey === col.key) { state.sortDir = -state.sortDir; }
        else { state.sortKey = col.key; state.sortDir = col.kind === "text" ? 1 : -1; }
        renderHead(); applyFilter();
      }
      h.addEventListener("click", sort);
      h.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { sort(); } });
      head.appendChild(h);
    });
  }
  function cellFor(col, i) {
    var v = col.get(i);
    var c;
    if (col.kind === "score") { c = scoreNode("div", v, col.reason(i)); }
    else if (col.kind === "num") {
      c = el("div", "num", v === null || v === undefined ? "" : fmt(v, 4));
      if (v !== null && v !== undefined) { c.title = String(v); }
    } else if (col.key === "label") {
      if (v === null || v === undefined) {
        var why = reasonOf(L.label_failed[i]);
        c = el("div", why ? "undef" : "missing", why ? "explanation failed" : "(no explanation)");
        if (why) { c.title = why; }
      } else { c = el("div", "label", v); c.title = String(v); }
    } else { c = el("div", "fid", v); c.title = L.id[i]; }
    c.classList.add("cell");
    if (col.cls) { c.classList.add(col.cls); }
    return c;
  }
  var rendered = { from: -1, to: -1 };
  function renderList() {
    var list = document.getElementById("list");
    var spacer = document.getElementById("list-spacer");
    spacer.style.height = (state.order.length * ROWH) + "px";
    rendered.from = rendered.to = -1;
    renderVisible(true);
  }
  function renderVisible(force) {
    var list = document.getElementById("list");
    var spacer = document.getElementById("list-spacer");
    if (!state.order) { return; }
    var n = state.order.length;
    var from = Math.max(0, Math.floor(list.scrollTop / ROWH) - 10);
    var to = Math.min(n, Math.ceil((list.scrollTop + list.clientHeight) / ROWH) + 10);
    if (!force && from === rendered.from && to === rendered.to) { return; }
    rendered.from = from; rendered.to = to;
    spacer.textContent = "";
    var frag = document.createDocumentFragment();
    for (var pos = from; pos < to; pos++) {
      var i = state.order[pos];
      var row = el("div", "row");
      row.style.gridTemplateColumns = GRID;
      row.style.top = (pos * ROWH) + "px";
      row.dataset.index = String(i);
      row.dataset.pos = String(pos);
      row.setAttribute("role", "row");
      if (pos === state.cursor) { row.classList.add("cursor"); }
      if (i === state.open) { row.classList.add("open"); }
      for (var c = 0; c < COLUMNS.length; c++) { row.appendChild(cellFor(COLUMNS[c], i)); }
      frag.appendChild(row);
    }
    spacer.appendChild(frag);
  }
  function markRows() {
    var rows = document.getElementById("list-spacer").children;
    for (var k = 0; k < rows.length; k++) {
      var r = rows[k];
      r.classList.toggle("cursor", parseInt(r.dataset.pos, 10) === state.cursor);
      r.classList.toggle("open", parseInt(r.dataset.index, 10) === state.open);
    }
  }
  function moveCursor(pos) {
    var n = state.order.length;
    if (!n) { return; }
    pos = Math.max(0, Math.min(n - 1, pos));
    state.cursor = pos;
    var list = document.getElementById("list");
    var top = pos * ROWH;
    if (top < list.scrollTop) { list.scrollTop = top; }
    else if (top + ROWH > list.scrollTop + list.clientHeight) { list.scrollTop = top + ROWH - list.clientHeight; }
    openFeature(state.order[pos]);
  }

  /* ---------------------------------------------------------------- card */
  /* Shading by class (10 levels per colour, see report.css): cheaper than an inline style per token. */
  function shadeClass(value, scale, hue) {
    if (typeof value !== "number" || !(scale > 0) || value === 0) { return ""; }
    var level = Math.max(1, Math.min(10, Math.round(Math.abs(value) / scale * 10)));
    return " " + (value < 0 ? "r" : hue) + level;
  }
  function showToken(t) { return String(t).replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192"); }
  function tokenLine(tokens, values, scale, hue) {
    var line = el("div", "tokens");
    for (var i = 0; i < tokens.length; i++) {
      var s = document.createElement("span");
      s.className = "tok" + shadeClass(values ? values[i] : null, scale, hue);
      s.textContent = showToken(tokens[i]);
      line.appendChild(s);
    }
    line.__tokens = tokens;  /* read by the tooltip handler on hover only */
    line.__values = values;
    return line;
  }
  /* One delegated handler writes a token's tooltip (its text and value) when the pointer first reaches it. */
  document.getElementById("card").addEventListener("mouseover", function (ev) {
    var t = ev.target;
    if (!t.classList || !t.classList.contains("tok") || t.title) { return; }
    var line = t.parentNode;
    var i = Array.prototype.indexOf.call(line.children, t);
    var v = line.__values ? line.__values[i] : null;
    t.title = JSON.stringify(String(line.__tokens[i])) + " = " + (typeof v === "number" ? String(v) : "n/a");
  });
  function maxAbs(arr) {
    var m = 0;
    (arr || []).forEach(function (v) { if (typeof v === "number" && Math.abs(v) > m) { m = Math.abs(v); } });
    return m;
  }
  function simScale(f, eid) {
    var m = 0;
    Object.keys(f.examples).forEach(function (split) {
      f.examples[split].forEach(function (r) { var s = r.sims[eid]; if (s && s.expected) { m = Math.max(m, maxAbs(s.expected)); } });
    });
    return m > 0 ? m : 1;
  }
  function statsTable(stats) {
    var t = el("table", "stats");
    if (!stats) { t.appendChild(el("caption", null, "no statistics")); return t; }
    Object.keys(stats).forEach(function (k) {
      var tr = el("tr");
      tr.appendChild(el("th", null, k === "frequency" ? "firing rate" : k.replace(/_/g, " ")));
      var v = stats[k];
      var text = Array.isArray(v) ? v.map(function (x) { return fmt(x, 3); }).join(", ")
        : (v === null ? "undefined" : (Number.isInteger(v) ? String(v) : fmt(v, 5)));
      var td = el("td", v === null ? "undef" : "num", text);
      if (v === null && k === "mean_active") { td.title = "the feature never fired"; }
      tr.appendChild(td);
      t.appendChild(tr);
    });
    return t;
  }
  function explanationsTable(f) {
    var t = el("table", "explanations");
    var head = el("tr");
    ["label", "kind", "explainer", "simulator"].concat(NAMES).forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(head);
    f.explanations.forEach(function (e) {
      var tr = el("tr", e.selected ? "selected" : (e.baseline ? "baseline" : ""));
      if (e.failed) { var ft = el("td", "label undef", "explainer answer unusable"); ft.title = e.failed; tr.appendChild(ft); }
      else { tr.appendChild(el("td", "label", e.text)); }
      tr.appendChild(el("td", null, e.baseline ? "shuffled baseline" : (e.yardstick ? "token-list yardstick" : (e.selected ? "selected #" + e.candidate : "candidate #" + e.candidate))));
      tr.appendChild(el("td", "spec", e.explainer));
      tr.appendChild(el("td", "spec", e.simulator || ""));
      NAMES.forEach(function (n) { tr.appendChild(scoreObjNode("td", e.scores[n])); });
      t.appendChild(tr);
    });
    return t;
  }
  function promptsSection(f) {
    var d = el("details", "prompts");
    d.appendChild(el("summary", null, "Prompts and raw answers"));
    var prompts = DATA.run.prompts || {};
    var names = Object.keys(prompts);
    d.appendChild(el("p", "legend", names.length
      ? "Prompt templates of this run (name: sha256 prefix): " + names.map(function (n) { return n + ": " + prompts[n]; }).join(", ")
      : "This run records no prompt templates."));
    if (f.prompt) {
      var pd = el("div", "raw");
      pd.appendChild(el("div", "raw-head", "the selected label's explainer prompt (rebuilt from the record and the run's settings; its template hash matches the label's)"));
      if (f.prompt.messages) {
        f.prompt.messages.forEach(function (m) {
          pd.appendChild(el("div", "role", m.role));
          pd.appendChild(el("pre", "prompt", m.content));
        });
      } else { pd.appendChild(el("p", "undef", "prompt not shown: " + f.prompt.reason)); }
      d.appendChild(pd);
    }
    f.explanations.forEach(function (e) {
      var box = el("div", "raw");
      box.appendChild(el("div", "raw-head", (e.baseline ? "shuffled baseline" : (e.yardstick ? "token-list yardstick" : "candidate #" + e.candidate)) +
        " · " + e.explainer + (e.prompt_hash ? " · prompt " + e.prompt_hash : "")));
      box.appendChild(el("pre", null, e.raw === null || e.raw === undefined || e.raw === "" ? "(no raw answer stored)" : e.raw));
      if (e.settings && Object.keys(e.settings).length) {
        box.appendChild(el("pre", "settings", "scorer settings: " + JSON.stringify(e.settings)));
      }
      d.appendChild(box);
    });
    return d;
  }
  function vocabSection(v) {
    var sec = el("section", "vocab");
    sec.appendChild(el("h3", null, "Vocabulary projection"));
    ["top", "bottom"].forEach(function (side) {
      if (!v[side] || !v[side].length) { return; }
      var p = el("p", "vocab-" + side);
      p.appendChild(el("span", "rowlabel", side === "top" ? "promoted" : "suppressed"));
      v[side].forEach(function (pair) {
        var s = el("span", "vtok", showToken(pair[0]));
        s.title = String(pair[1]);
        p.appendChild(s);
      });
      sec.appendChild(p);
    });
    return sec;
  }
  function examplesSection(f, split) {
    var recs = f.examples[split];
    var sec = el("section", "split");
    sec.dataset.split = split;
    sec.appendChild(el("h3", null, (DATA.split_titles[split] || split) + " (" + recs.length + ")"));
    var trueScale = f.stats && f.stats.max > 0 ? f.stats.max : 0;
    var simId = state.showBaselineSim ? f.baseline_id : f.label_id;
    var scale = simId ? simScale(f, simId) : 1;
    var grid = el("div", "pair-grid");
    grid.appendChild(el("div", "pair-head", "true activation"));
    grid.appendChild(el("div", "pair-head", state.showBaselineSim ? "simulated from the shuffled baseline label" : "simulated from the label"));
    recs.forEach(function (r) {
      grid.appendChild(tokenLine(r.tokens, r.acts, trueScale > 0 ? trueScale : maxAbs(r.acts), "g"));
      var s = simId ? r.sims[simId] : null;
      if (s && s.expected) { grid.appendChild(tokenLine(r.tokens, s.expected, scale, "b")); }
      else if (s) { grid.appendChild(el("div", "undef", "simulation failed: " + (s.failed || "unknown reason"))); }
      else { grid.appendChild(el("div", "missing", split === "train" ? "(not simulated: shown to the explainer)" : "(not simulated)")); }
    });
    sec.appendChild(grid);
    return sec;
  }
  function renderCard(i, f) {
    var d = document.getElementById("card");
    d.textContent = "";
    d.appendChild(el("h2", "feature-id", f.id));
    d.appendChild(el("p", "feature-label", f.label === null ? (f.label_failed ? "explanation failed: " + f.label_failed : "(no explanation)") : f.label));
    if (f.baseline_label) { d.appendChild(el("p", "baseline-label", "shuffled baseline label: " + f.baseline_label)); }
    if (f.yardstick_label) { d.appendChild(el("p", "baseline-label", "token-list yardstick (no LLM): " + f.yardstick_label)); }
    if (CMP) {
      var other = CMP.label[i];
      d.appendChild(el("p", "compare-label", CMP.name + ": " + (other === null ? "(no explanation)" : other)));
    }
    var cards = el("div", "score-cards");
    NAMES.forEach(function (n) {
      var card = el("div", "scard");
      card.appendChild(el("div", "card-title", n));
      card.appendChild(scoreObjNode("div", f.scores[n]));
      var b = el("div", "card-base");
      b.appendChild(el("span", null, "baseline "));
      b.appendChild(scoreObjNode("span", f.baseline[n]));
      card.appendChild(b);
      if (f.yardstick && f.yardstick[n]) {
        var y = el("div", "card-base");
        y.appendChild(el("span", null, "token list "));
        y.appendChild(scoreObjNode("span", f.yardstick[n]));
        card.appendChild(y);
      }
      if (CMP && CMP.scores[n]) {
        var c = el("div", "card-base");
        c.appendChild(el("span", null, CMP.name + " "));
        c.appendChild(scoreNode("span", CMP.scores[n][i], "not scored"));
        card.appendChild(c);
      }
      cards.appendChild(card);
    });
    var st = el("div", "scard");
    st.appendChild(el("div", "card-title", "firing rate"));
    st.appendChild(el("div", "num", f.stats ? fmt(f.stats.frequency, 5) : "—"));
    st.appendChild(el("div", "card-base", "max activation " + (f.stats ? fmt(f.stats.max, 4) : "—")));
    cards.appendChild(st);
    d.appendChild(cards);
    if (f.vocab) { d.appendChild(vocabSection(f.vocab)); }
    var cols = el("div", "detail-cols");
    var left = el("div", "col");
    left.appendChild(el("h3", null, "Labels"));
    left.appendChild(explanationsTable(f));
    var right = el("div", "col");
    right.appendChild(el("h3", null, "Statistics"));
    right.appendChild(statsTable(f.stats));
    cols.appendChild(left); cols.appendChild(right);
    d.appendChild(cols);
    d.appendChild(promptsSection(f));
    var bar = el("div", "legend");
    bar.appendChild(el("span", null, "Green: true activation (relative to the feature's max); blue: simulated (relative to its max); red: negative. Hover a token for its value. "));
    if (f.baseline_id) {
      var tog = el("button", "toggle", state.showBaselineSim ? "show the label's simulation" : "show the baseline's simulation");
      tog.type = "button";
      tog.addEventListener("click", function () { state.showBaselineSim = !state.showBaselineSim; renderCard(i, f); });
      bar.appendChild(tog);
    }
    d.appendChild(bar);
    var any = false;
    ["test_top", "test_quantiles", "test_random", "train"].forEach(function (split) {
      if (f.examples[split] && f.examples[split].length) { d.appendChild(examplesSection(f, split)); any = true; }
    });
    if (!any) { d.appendChild(el("p", "missing", "No examples recorded for this feature.")); }
  }
  var openSeq = 0;
  function openFeature(i) {
    var t = performance.now();
    var seq = ++openSeq;
    state.open = i;
    showView("features", true, true);
    markRows();
    return cardOf(i).then(function (f) {
      if (seq !== openSeq) { return; }
      renderCard(i, f);
      perf.card_ms = performance.now() - t;
      perf.cards_opened += 1;
      try { history.replaceState(null, "", "#" + encodeURIComponent(f.id)); } catch (e) { /* not allowed here */ }
    }).catch(function (err) {
      var d = document.getElementById("card");
      d.textContent = "";
      d.appendChild(el("p", "undef", "Cannot load this feature's data: " + err.message +
        (location.protocol === "file:" ? " (a folder report must be served: autointerp serve RUN_DIR)" : "")));
    });
  }

  /* ---------------------------------------------------------------- overview */
  function histogram(edges, series) {
    var box = el("div", "hist");
    var max = 1;
    series.forEach(function (s) { s.counts.forEach(function (c) { if (c > max) { max = c; } }); });
    for (var b = 0; b < edges.length - 1; b++) {
      var bin = el("div", "bin");
      series.forEach(function (s) {
        var bar = el("div", "bar " + s.cls);
        bar.style.height = (100 * s.counts[b] / max).toFixed(1) + "%";
        bar.title = s.name + " [" + fmt(edges[b]) + ", " + fmt(edges[b + 1]) + "): " + s.counts[b];
        bin.appendChild(bar);
      });
      box.appendChild(bin);
    }
    var wrap = el("div", "hist-wrap");
    wrap.appendChild(box);
    var axis = el("div", "axis");
    axis.appendChild(el("span", null, fmt(edges[0])));
    axis.appendChild(el("span", null, fmt(edges[edges.length - 1])));
    wrap.appendChild(axis);
    return wrap;
  }
  function reasonList(title, counts) {
    var keys = Object.keys(counts || {});
    var box = el("div", "reasons");
    box.appendChild(el("h4", null, title + (keys.length ? "" : ": none")));
    if (keys.length) {
      var ul = el("ul");
      keys.forEach(function (k) { ul.appendChild(el("li", null, counts[k] + " × " + k)); });
      box.appendChild(ul);
    }
    return box;
  }
  function usageTable(u) {
    var t = el("table", "usage");
    var head = el("tr");
    ["role", "LLM", "requests", "from cache", "prompt tokens", "completion tokens", "cost (USD)"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(head);
    var roles = Object.keys(u).filter(function (k) { return u[k] && typeof u[k] === "object" && typeof u[k].requests === "number"; });
    roles.forEach(function (role) {
      var r = u[role];
      var tr = el("tr", role === "total" ? "total" : "");
      tr.appendChild(el("td", null, role));
      tr.appendChild(el("td", "spec", r.spec || ""));
      [r.requests, r.cache_hits, r.prompt_tokens, r.completion_tokens].forEach(function (v) { tr.appendChild(el("td", "num", v === undefined ? "" : String(v))); });
      if (typeof r.cost_usd === "number") { tr.appendChild(el("td", "num", "$" + r.cost_usd.toFixed(4))); }
      else { var c = el("td", "undef", "undefined"); c.title = u.cost_reason || "no price for this LLM"; tr.appendChild(c); }
      t.appendChild(tr);
    });
    if (!roles.length) { var none = el("tr"); none.appendChild(el("td", "missing", "no LLM usage recorded")); t.appendChild(none); }
    return t;
  }
  /* Input vs output: one point per feature with both scores; the selectors pick the pair. */
  var SVGNS = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    return e;
  }
  function scatterPlot(x, y) {
    var W = 420, H = 300, M = 40;
    var idx = [];
    for (var i = 0; i < N; i++) { if (L.scores[x][i] !== null && L.scores[y][i] !== null) { idx.push(i); } }
    var svg = svgEl("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, "class": "scatter", role: "img" });
    svg.appendChild(svgEl("title")).textContent = y + " against " + x + ", one point per feature";
    function range(vals) {
      var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
      if (!(hi - lo > 1e-12)) { lo -= 0.5; hi += 0.5; }
      var pad = 0.04 * (hi - lo);
      return [lo - pad, hi + pad];
    }
    var xs = idx.map(function (i) { return L.scores[x][i]; }), ys = idx.map(function (i) { return L.scores[y][i]; });
    var rx = idx.length ? range(xs) : [0, 1], ry = idx.length ? range(ys) : [0, 1];
    function px(v) { return M + (W - 2 * M) * (v - rx[0]) / (rx[1] - rx[0]); }
    function py(v) { return H - M - (H - 2 * M) * (v - ry[0]) / (ry[1] - ry[0]); }
    svg.appendChild(svgEl("line", { x1: M, y1: H - M, x2: W - M, y2: H - M, "class": "axis-line" }));
    svg.appendChild(svgEl("line", { x1: M, y1: M, x2: M, y2: H - M, "class": "axis-line" }));
    /* axis ends: the data's own range (the plot is padded by 4% on each side) */
    var lx = idx.length ? [Math.min.apply(null, xs), Math.max.apply(null, xs)] : rx;
    var ly = idx.length ? [Math.min.apply(null, ys), Math.max.apply(null, ys)] : ry;
    [[fmt(lx[0]), px(lx[0]), H - M + 14, "start"], [fmt(lx[1]), px(lx[1]), H - M + 14, "end"], [x, W / 2, H - 6, "middle"]].forEach(function (t) {
      svg.appendChild(svgEl("text", { x: t[1], y: t[2], "text-anchor": t[3] })).textContent = t[0];
    });
    [[fmt(ly[0]), py(ly[0])], [fmt(ly[1]), py(ly[1]) + 4]].forEach(function (t) {
      svg.appendChild(svgEl("text", { x: M - 4, y: t[1], "text-anchor": "end" })).textContent = t[0];
    });
    svg.appendChild(svgEl("text", { x: 12, y: H / 2, "text-anchor": "middle", transform: "rotate(-90 12 " + H / 2 + ")" })).textContent = y;
    idx.forEach(function (i) {
      var c = svgEl("circle", { cx: px(L.scores[x][i]).toFixed(1), cy: py(L.scores[y][i]).toFixed(1), r: 4, "class": "pt", tabindex: 0 });
      c.dataset.feature = L.id[i];
      c.appendChild(svgEl("title")).textContent = L.id[i] + ": " + (L.label[i] || "") + " (" + x + " " + fmt(L.scores[x][i]) + ", " + y + " " + fmt(L.scores[y][i]) + ")";
      c.addEventListener("click", function () { showView("features"); openFeature(i); });
      svg.appendChild(c);
    });
    return svg;
  }
  function scatterSection() {
    var S = DATA.scatter;
    var box = el("div", "scatter-box");
    box.appendChild(el("h3", null, "Input against output score, per feature"));
    if (!S || !S.inputs.length || !S.outputs.length) {
      box.appendChild(el("p", "missing", "Needs an input-side score (correlation, detection, fuzzing, embedding, surprisal) and an output-side one " +
        "(intervention, intervention_kl): score the run with both, e.g. autointerp score RUN --scorers detection,intervention_kl."));
      return box;
    }
    var st = { x: S.x, y: S.y };
    var controls = el("div", "controls");
    var plot = el("div", "scatter-plot");
    var note = el("p", "num-line");
    function selector(label, names, key) {
      var lab = el("label", null, label + " ");
      var s = el("select");
      s.id = "scatter-" + key;
      names.forEach(function (n) { var o = el("option", null, n); o.value = n; o.selected = n === st[key]; s.appendChild(o); });
      s.addEventListener("change", function () { st[key] = s.value; draw(); });
      lab.appendChild(s);
      return lab;
    }
    controls.appendChild(selector("input (x)", S.inputs, "x"));
    controls.appendChild(selector("output (y)", S.outputs, "y"));
    function draw() {
      plot.textContent = "";
      plot.appendChild(scatterPlot(st.x, st.y));
      var r = S.spearman[st.x][st.y];
      note.textContent = r.n + " of " + N + " features have both scores; Spearman rho " +
        (r.rho === null ? "undefined (" + r.reason + ")" : fmt(r.rho, 3)) + ". Click a point to open its feature.";
    }
    box.appendChild(controls);
    box.appendChild(plot);
    box.appendChild(note);
    draw();
    return box;
  }
  function renderOverview() {
    var o = DATA.overview;
    var v = document.getElementById("view-overview");
    v.textContent = "";
    o.missing.forEach(function (m) { v.appendChild(el("p", "banner", m)); });
    if (o.warnings.length) {
      var w = el("div", "banner warn");
      w.appendChild(el("strong", null, o.warnings.length + " warning(s) while reading the run:"));
      var ul = el("ul");
      o.warnings.forEach(function (m) { ul.appendChild(el("li", null, m)); });
      w.appendChild(ul);
      v.appendChild(w);
    }
    v.appendChild(el("p", null, o.n_features + " features, " + o.n_explained + " with a label, " + o.n_simulations + " simulations."));
    var undef = Object.keys(o.undefined_scores || {});
    if (undef.length) {
      v.appendChild(el("p", "hint", "Undefined for every feature, so not shown: " + undef.map(function (n) {
        return n + " (" + o.undefined_scores[n] + ")"; }).join("; ")));
    }
    var grid = el("div", "overview-grid");
    NAMES.forEach(function (n) {
      var s = o.scores[n];
      var box = el("div", "ov-score");
      box.dataset.score = n;
      box.appendChild(el("h3", null, n));
      var t = el("table", "means");
      var rows = [["explained", s.explained, "ex"], ["shuffled baseline", s.baseline, "bl"]];
      if (s.yardstick) { rows.push(["token-list yardstick (no LLM)", s.yardstick, "bl"]); }
      rows.forEach(function (row) {
        var tr = el("tr");
        var key = el("td");
        key.appendChild(el("span", "swatch " + row[2]));
        key.appendChild(document.createTextNode(row[0]));
        tr.appendChild(key);
        tr.appendChild(el("td", "num", ciText(row[1])));
        tr.appendChild(el("td", "num", "n=" + row[1].n));
        t.appendChild(tr);
      });
      box.appendChild(t);
      box.appendChild(histogram(s.edges, [{ name: "explained", cls: "ex", counts: s.explained.hist },
                                          { name: "baseline", cls: "bl", counts: s.baseline.hist }]));
      box.appendChild(reasonList("undefined (explained)", s.explained.undefined));
      box.appendChild(reasonList("undefined (baseline)", s.baseline.undefined));
      grid.appendChild(box);
    });
    v.appendChild(grid);
    v.appendChild(scatterSection());
    var fails = el("div", "overview-grid");
    fails.appendChild(reasonList("failed explanations", o.failed_explanations));
    fails.appendChild(reasonList("failed simulations", o.failed_simulations));
    v.appendChild(fails);
    v.appendChild(el("h3", null, "LLM usage and cost per role"));
    v.appendChild(usageTable(DATA.usage || {}));
    var files = Object.keys(o.files || {});
    if (files.length) {
      v.appendChild(el("h3", null, "Run directory"));
      var ft = el("ul", "files");
      files.forEach(function (k) { ft.appendChild(el("li", o.files[k] ? "" : "missing", k + (o.files[k] ? "" : " (missing)"))); });
      v.appendChild(ft);
      var stages = Object.keys(o.stages || {});
      if (stages.length) {
        v.appendChild(el("p", "legend", "stages: " + stages.map(function (k) { return k + " " + (o.stages[k].status || "?"); }).join(", ")));
      }
    }
  }

  /* ---------------------------------------------------------------- compare */
  function renderCompare() {
    var v = document.getElementById("view-compare");
    v.textContent = "";
    v.appendChild(el("p", null, "This run against " + CMP.name + " (" + CMP.path + "), on this run's " + N +
      " features (" + CMP.n_common + " also in the other run). Differences are this run minus the other, paired by feature."));
    var grid = el("div", "overview-grid");
    Object.keys(CMP.paired).forEach(function (n) {
      var s = CMP.paired[n];
      var box = el("div", "ov-score");
      box.dataset.score = n;
      box.appendChild(el("h3", null, "Δ " + n));
      box.appendChild(el("p", "num-line", "mean difference " + ciText(s) + ", n=" + s.n + " features scored in both"));
      box.appendChild(histogram(s.edges, [{ name: "Δ " + n, cls: "ex", counts: s.hist }]));
      grid.appendChild(box);
    });
    v.appendChild(grid);
    if (!P || !CMP.scores[P]) { return; }
    var idx = [];
    for (var i = 0; i < N; i++) { if (L.scores[P][i] !== null && CMP.scores[P][i] !== null) { idx.push(i); } }
    idx.sort(function (a, b) { return Math.abs(L.scores[P][b] - CMP.scores[P][b]) - Math.abs(L.scores[P][a] - CMP.scores[P][a]); });
    v.appendChild(el("h3", null, "Largest differences in " + P + " (click to open)"));
    var t = el("table", "compare-table");
    var head = el("tr");
    ["feature", "label (this run)", P, "label (" + CMP.name + ")", P, "Δ"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(head);
    idx.slice(0, 200).forEach(function (i) {
      var tr = el("tr");
      tr.tabIndex = 0;
      tr.appendChild(el("td", "fid", L.id[i]));
      tr.appendChild(el("td", "label", L.label[i] || ""));
      tr.appendChild(el("td", "num", fmt(L.scores[P][i])));
      tr.appendChild(el("td", "label", CMP.label[i] || ""));
      tr.appendChild(el("td", "num", fmt(CMP.scores[P][i])));
      tr.appendChild(el("td", "num", fmt(L.scores[P][i] - CMP.scores[P][i])));
      tr.addEventListener("click", function () { openFeature(i); });
      tr.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { openFeature(i); } });
      t.appendChild(tr);
    });
    v.appendChild(t);
  }

  /* ---------------------------------------------------------------- views and keys */
  var VIEWS = [["features", "Features"], ["overview", "Overview"]];
  if (CMP) { VIEWS.push(["compare", "Compare"]); }
  var drawn = {};
  function showView(name, keepHash, noRender) {
    VIEWS.forEach(function (pair) {
      document.getElementById("view-" + pair[0]).hidden = pair[0] !== name;
      var tab = document.getElementById("tab-" + pair[0]);
      tab.classList.toggle("active", pair[0] === name);
      tab.setAttribute("aria-selected", pair[0] === name ? "true" : "false");
    });
    if (!drawn[name]) {
      drawn[name] = true;
      if (name === "overview") { renderOverview(); }
      if (name === "compare") { renderCompare(); }
    }
    if (!keepHash && name !== "features") { try { history.replaceState(null, "", "#" + name); } catch (e) { /* file: */ } }
    if (name === "features" && !noRender) { renderVisible(true); }
  }
  var tabs = document.getElementById("tabs");
  VIEWS.forEach(function (pair) {
    var b = el("button", "tab", pair[1]);
    b.type = "button";
    b.id = "tab-" + pair[0];
    b.setAttribute("role", "tab");
    b.addEventListener("click", function () { showView(pair[0]); });
    tabs.appendChild(b);
  });

  document.addEventListener("keydown", function (ev) {
    var tag = ev.target && ev.target.tagName;
    var typing = tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA";
    if (typing) {
      if (ev.key === "Escape" || ev.key === "Enter" || ev.key === "ArrowDown") {
        ev.target.blur(); document.getElementById("list").focus();
        if (ev.key !== "Escape" && state.order.length) { moveCursor(state.cursor < 0 ? 0 : state.cursor); }
        ev.preventDefault();
      }
      return;
    }
    if (document.getElementById("view-features").hidden) { return; }
    var page = Math.max(1, Math.floor(document.getElementById("list").clientHeight / ROWH) - 1);
    if (ev.key === "ArrowDown" || ev.key === "j") { moveCursor(state.cursor + 1); ev.preventDefault(); }
    else if (ev.key === "ArrowUp" || ev.key === "k") { moveCursor(state.cursor - 1); ev.preventDefault(); }
    else if (ev.key === "PageDown") { moveCursor(state.cursor + page); ev.preventDefault(); }
    else if (ev.key === "PageUp") { moveCursor(state.cursor - page); ev.preventDefault(); }
    else if (ev.key === "Home") { moveCursor(0); ev.preventDefault(); }
    else if (ev.key === "End") { moveCursor(state.order.length - 1); ev.preventDefault(); }
    else if (ev.key === "Enter" && state.cursor >= 0) { openFeature(state.order[state.cursor]); ev.preventDefault(); }
    else if (ev.key === "/") { document.getElementById("filter").focus(); ev.preventDefault(); }
  });

  /* ---------------------------------------------------------------- page */
  document.getElementById("title").textContent = DATA.title;
  document.title = DATA.title;
  var info = document.getElementById("run-info");
  var bits = [DATA.run.command, DATA.run.created_at, DATA.run.path, N + " features"];
  var usage = DATA.usage && DATA.usage.total;
  if (usage && typeof usage.requests === "number") {
    bits.push(usage.requests + " LLM requests" + (usage.cache_hits ? " (+" + usage.cache_hits + " from cache)" : ""));
    if (typeof usage.cost_usd === "number") { bits.push("LLM cost $" + usage.cost_usd.toFixed(4)); }
    else if (usage.cost_usd === null) { bits.push("LLM cost undefined" + (DATA.usage.cost_reason ? " (" + DATA.usage.cost_reason + ")" : "")); }
  }
  info.textContent = bits.filter(function (x) { return x !== null && x !== undefined && x !== ""; }).join(" · ");
  var details = el("details", "config");
  details.appendChild(el("summary", null, "configuration, models, prompts and versions"));
  details.appendChild(el("pre", null, JSON.stringify({ config: DATA.run.config, models: DATA.run.models, prompts: DATA.run.prompts, versions: DATA.run.versions }, null, 2)));
  info.appendChild(details);
  if (DATA.overview.warnings.length || DATA.overview.missing.length) {
    var note = el("p", "banner warn", DATA.overview.missing.concat(
      DATA.overview.warnings.length ? [DATA.overview.warnings.length + " warning(s) while reading the run: see Overview"] : []).join(" · "));
    info.appendChild(note);
  }
  var sel = document.getElementById("source-filter");
  sel.appendChild(el("option", null, "all sources")).value = "";
  DATA.sources.forEach(function (s, k) { var o = el("option", null, s || "(unparsed ids)"); o.value = String(k); sel.appendChild(o); });
  sel.hidden = DATA.sources.length < 2;
  var pending = null;
  document.getElementById("filter").addEventListener("input", function () {
    if (pending !== null) { cancelAnimationFrame(pending); }
    pending = requestAnimationFrame(function () { pending = null; applyFilter(); });
  });
  sel.addEventListener("change", applyFilter);
  document.getElementById("list").addEventListener("scroll", function (ev) {
    document.getElementById("list-head").scrollLeft = ev.target.scrollLeft;  // the header follows the columns
    renderVisible(false);
  }, { passive: true });
  document.getElementById("list").addEventListener("click", function (ev) {
    var row = ev.target.closest ? ev.target.closest(".row") : null;
    if (row && row.dataset.pos) { state.cursor = parseInt(row.dataset.pos, 10); openFeature(parseInt(row.dataset.index, 10)); }
  });
  window.addEventListener("resize", function () { renderVisible(true); });
  if (P) { state.sortKey = "s:" + P; state.sortDir = -1; }
  renderHead();
  showView("features", true);
  applyFilter();
  perf.list_at = performance.now();
  perf.list_ms = perf.list_at - T0;
  /* For tests and the benchmark: timings measured inside the page, and the views' entry points. */
  window.__report = {
    perf: perf,
    chunk_size: DATA.chunk_size,
    setFilter: function (q) { document.getElementById("filter").value = q; applyFilter(); return state.order.length; },
    open: function (i) { return openFeature(i); },
    openId: function (id) { var i = L.id.indexOf(id); return i >= 0 ? openFeature(i) : Promise.reject(new Error("no feature " + id)); },
    show: function (name) { showView(name); }
  };
  var hash = "";
  try { hash = decodeURIComponent(location.hash.slice(1)); } catch (e) { hash = ""; }
  if (hash === "overview" || (hash === "compare" && CMP)) { showView(hash); }
  else if (hash) { var at = L.id.indexOf(hash); if (at >= 0) { state.cursor = state.order.indexOf(at); openFeature(at); } }
  document.body.dataset.ready = "1";
})();
