/* autointerp report: renders the embedded JSON. Data is untrusted text: only textContent,
   createElement and property assignment are used here, never HTML parsing of strings. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var FEATURES = DATA.features;
  var NAMES = DATA.score_names;
  var state = { sortKey: null, sortDir: 1, filter: "", open: null };

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
  /* A score cell: the value, or "undefined" with the reason as tooltip (never 0, never NaN). */
  function scoreNode(tag, s) {
    if (!s) { var m = el(tag, "missing", "—"); m.title = "not scored"; return m; }
    if (s.value === null || s.value === undefined) {
      var u = el(tag, "undef", "undefined");
      u.title = s.reason || "undefined";
      return u;
    }
    var d = el(tag, "num", fmt(s.value));
    d.title = String(s.value);
    return d;
  }

  /* ---- columns of the feature table ---- */
  var COLUMNS = [
    { key: "feature", title: "feature", get: function (f) { return f.id; }, kind: "text" },
    { key: "label", title: "label", get: function (f) { return f.label; }, kind: "text" }
  ];
  NAMES.forEach(function (n) {
    COLUMNS.push({ key: "s:" + n, title: n, score: true, get: function (f) { return f.scores[n]; }, kind: "score" });
  });
  /* One baseline column (the primary score's) keeps the table narrow; the detail view shows all. */
  if (DATA.primary_score) {
    var P = DATA.primary_score;
    COLUMNS.push({ key: "b:" + P, title: "baseline " + P, score: true,
                   get: function (f) { return f.baseline[P]; }, kind: "score", cls: "baseline-col" });
  }
  COLUMNS.push({ key: "frequency", title: "frequency", get: function (f) { return f.stats ? f.stats.frequency : null; }, kind: "num" });
  COLUMNS.push({ key: "max", title: "max", get: function (f) { return f.stats ? f.stats.max : null; }, kind: "num" });

  function sortValue(col, f) {
    var v = col.get(f);
    if (col.kind === "score") { return v && typeof v.value === "number" ? v.value : null; }
    if (v === undefined) { return null; }
    return v;
  }
  function compareFeatures(a, b) {
    var col = COLUMNS.filter(function (c) { return c.key === state.sortKey; })[0];
    if (!col) { return 0; }
    var va = sortValue(col, a), vb = sortValue(col, b);
    // Undefined values sort last in both directions.
    if (va === null && vb === null) { return 0; }
    if (va === null) { return 1; }
    if (vb === null) { return -1; }
    if (typeof va === "number" && typeof vb === "number") { return (va - vb) * state.sortDir; }
    return String(va).localeCompare(String(vb), undefined, { numeric: true }) * state.sortDir;
  }

  function renderHeader() {
    var row = document.getElementById("header-row");
    row.textContent = "";
    COLUMNS.forEach(function (col) {
      var th = el("th", col.cls || "", col.title);
      th.dataset.key = col.key;
      th.tabIndex = 0;
      th.title = "sort by " + col.title;
      if (state.sortKey === col.key) {
        th.classList.add(state.sortDir > 0 ? "sorted-asc" : "sorted-desc");
        th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
      }
      function sort() {
        if (state.sortKey === col.key) { state.sortDir = -state.sortDir; }
        else { state.sortKey = col.key; state.sortDir = (col.kind === "text") ? 1 : -1; }
        renderHeader(); renderRows();
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { sort(); } });
      row.appendChild(th);
    });
  }

  function matches(f) {
    if (!state.filter) { return true; }
    var q = state.filter.toLowerCase();
    return f.id.toLowerCase().indexOf(q) >= 0 || (f.label || "").toLowerCase().indexOf(q) >= 0;
  }

  function renderRows() {
    var body = document.getElementById("feature-rows");
    body.textContent = "";
    var rows = FEATURES.map(function (f, i) { return { f: f, i: i }; }).filter(function (r) { return matches(r.f); });
    if (state.sortKey) { rows.sort(function (a, b) { return compareFeatures(a.f, b.f) || a.i - b.i; }); }
    rows.forEach(function (r) {
      var tr = el("tr");
      tr.dataset.index = String(r.i);
      tr.tabIndex = 0;
      if (state.open === r.i) { tr.classList.add("open"); }
      COLUMNS.forEach(function (col) {
        var v = col.get(r.f);
        var td;
        if (col.kind === "score") { td = scoreNode("td", v); }
        else if (col.kind === "num") { td = el("td", "num", fmt(v, 4)); if (v !== null && v !== undefined) { td.title = String(v); } }
        else if (col.key === "label" && (v === null || v === undefined) && r.f.label_failed) {
          td = el("td", "label undef", "explanation failed");
          td.title = r.f.label_failed;
        }
        else if (v === null || v === undefined) { td = el("td", "missing", col.key === "label" ? "(no explanation)" : ""); }
        else if (col.key === "label") {
          td = el("td", "label");
          var clamp = el("div", "clamp", v);
          clamp.title = String(v);
          td.appendChild(clamp);
        }
        else { td = el("td", col.key, v); }
        if (col.cls) { td.classList.add(col.cls); }
        tr.appendChild(td);
      });
      tr.addEventListener("click", function () { openFeature(r.i); });
      tr.addEventListener("keydown", function (ev) { if (ev.key === "Enter") { openFeature(r.i); } });
      body.appendChild(tr);
    });
    document.getElementById("count").textContent = rows.length + " of " + FEATURES.length + " features";
  }

  /* ---- detail view ---- */
  function shade(value, scale, rgb) {
    if (typeof value !== "number" || !(scale > 0)) { return "transparent"; }
    var a = Math.max(0, Math.min(1, Math.abs(value) / scale)) * 0.85;
    var c = value < 0 ? "220,50,47" : rgb;
    return "rgba(" + c + "," + a.toFixed(3) + ")";
  }
  function showToken(t) {
    return String(t).replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");
  }
  function tokenRow(label, tokens, values, scale, rgb, cls) {
    var row = el("div", "tokrow " + cls);
    row.appendChild(el("span", "rowlabel", label));
    var line = el("span", "tokens");
    for (var i = 0; i < tokens.length; i++) {
      var s = el("span", "tok", showToken(tokens[i]));
      var v = values ? values[i] : null;
      s.style.backgroundColor = shade(v, scale, rgb);
      s.title = JSON.stringify(String(tokens[i])) + " = " + (typeof v === "number" ? String(v) : "n/a");
      line.appendChild(s);
    }
    row.appendChild(line);
    return row;
  }
  function maxOf(arr) {
    var m = 0;
    (arr || []).forEach(function (v) { if (typeof v === "number" && Math.abs(v) > m) { m = Math.abs(v); } });
    return m;
  }
  function simScale(f, eid) {
    var m = 0;
    Object.keys(f.examples).forEach(function (split) {
      f.examples[split].forEach(function (r) {
        var s = r.sims[eid];
        if (s && s.expected) { m = Math.max(m, maxOf(s.expected)); }
      });
    });
    return m > 0 ? m : 1;
  }

  function statsTable(stats) {
    var t = el("table", "stats");
    if (!stats) { t.appendChild(el("caption", null, "no statistics")); return t; }
    Object.keys(stats).forEach(function (k) {
      var tr = el("tr");
      tr.appendChild(el("th", null, k.replace(/_/g, " ")));
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
    ["explanation", "kind", "explainer", "simulator"].concat(NAMES).forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(head);
    f.explanations.forEach(function (e) {
      var tr = el("tr", e.selected ? "selected" : (e.baseline ? "baseline" : ""));
      if (e.failed) {
        var ft = el("td", "label undef", "explainer answer unusable");
        ft.title = e.failed;
        tr.appendChild(ft);
      } else { tr.appendChild(el("td", "label", e.text)); }
      tr.appendChild(el("td", null, e.baseline ? "shuffled baseline" : (e.selected ? "selected #" + e.candidate : "candidate #" + e.candidate)));
      tr.appendChild(el("td", "spec", e.explainer));
      tr.appendChild(el("td", "spec", e.simulator || ""));
      NAMES.forEach(function (n) { tr.appendChild(scoreNode("td", e.scores[n])); });
      t.appendChild(tr);
    });
    return t;
  }

  function examplesSection(f, split) {
    var recs = f.examples[split];
    var sec = el("section", "split");
    sec.dataset.split = split;
    sec.appendChild(el("h3", null, (DATA.split_titles[split] || split) + " (" + recs.length + ")"));
    var trueScale = f.stats && f.stats.max > 0 ? f.stats.max : 0;
    var ids = [f.label_id, f.baseline_id].filter(function (x) { return !!x; });
    var scales = {};
    ids.forEach(function (id) { scales[id] = simScale(f, id); });
    recs.forEach(function (r, i) {
      var box = el("div", "record");
      var scale = trueScale > 0 ? trueScale : maxOf(r.acts);
      box.appendChild(tokenRow("true #" + i, r.tokens, r.acts, scale, "34,139,34", "true"));
      ids.forEach(function (id) {
        var s = r.sims[id];
        if (!s) { return; }
        var lab = (id === f.baseline_id ? "baseline sim" : "simulated");
        if (s.expected) { box.appendChild(tokenRow(lab, r.tokens, s.expected, scales[id], "30,100,220", "sim")); }
        else {
          var fail = el("div", "tokrow failed");
          fail.appendChild(el("span", "rowlabel", lab));
          fail.appendChild(el("span", "undef", "simulation failed: " + (s.failed || "unknown reason")));
          box.appendChild(fail);
        }
      });
      sec.appendChild(box);
    });
    return sec;
  }

  function openFeature(i) {
    state.open = i;
    var f = FEATURES[i];
    var d = document.getElementById("detail");
    d.textContent = "";
    d.hidden = false;
    var close = el("button", "close", "close");
    close.type = "button";
    close.addEventListener("click", function () { d.hidden = true; state.open = null; renderRows(); });
    d.appendChild(close);
    d.appendChild(el("h2", "feature-id", f.id));
    var lab = el("p", "feature-label", f.label === null ? (f.label_failed ? "explanation failed: " + f.label_failed : "(no explanation)") : f.label);
    d.appendChild(lab);
    if (f.baseline_label !== null && f.baseline_label !== undefined) {
      d.appendChild(el("p", "baseline-label", "shuffled baseline label: " + f.baseline_label));
    }
    var scores = el("div", "score-cards");
    NAMES.forEach(function (n) {
      var card = el("div", "card");
      card.appendChild(el("div", "card-title", n));
      card.appendChild(scoreNode("div", f.scores[n]));
      var b = el("div", "card-base");
      b.appendChild(el("span", null, "baseline "));
      b.appendChild(scoreNode("span", f.baseline[n]));
      card.appendChild(b);
      scores.appendChild(card);
    });
    d.appendChild(scores);
    var cols = el("div", "detail-cols");
    var left = el("div", "col");
    left.appendChild(el("h3", null, "Explanations"));
    left.appendChild(explanationsTable(f));
    var right = el("div", "col");
    right.appendChild(el("h3", null, "Statistics"));
    right.appendChild(statsTable(f.stats));
    cols.appendChild(left); cols.appendChild(right);
    d.appendChild(cols);
    var legend = el("p", "legend", "Green: true activation; blue: simulated (each shaded relative to its own maximum); red: negative. Hover a token for its value.");
    d.appendChild(legend);
    var any = false;
    ["test_top", "test_quantiles", "test_random", "train"].forEach(function (split) {
      if (f.examples[split] && f.examples[split].length) { d.appendChild(examplesSection(f, split)); any = true; }
    });
    if (!any) { d.appendChild(el("p", "missing", "No examples recorded for this feature.")); }
    renderRows();
    try { history.replaceState(null, "", "#" + encodeURIComponent(f.id)); } catch (e) { /* not allowed here */ }
    d.scrollIntoView({ block: "start" });
  }

  /* ---- page ---- */
  document.getElementById("title").textContent = DATA.title;
  document.title = DATA.title;
  var info = document.getElementById("run-info");
  var bits = [DATA.run.command, DATA.run.created_at, DATA.run.path, FEATURES.length + " features"];
  var usage = DATA.usage && (DATA.usage.total || DATA.usage);
  if (usage && typeof usage.requests === "number") {
    bits.push(usage.requests + " LLM requests" + (usage.cache_hits ? " (+" + usage.cache_hits + " from cache)" : ""));
    if (typeof usage.cost_usd === "number") {
      bits.push("LLM cost $" + usage.cost_usd.toFixed(4));
    } else if (usage.cost_usd === null) {
      bits.push("LLM cost undefined" + (DATA.usage.cost_reason ? " (" + DATA.usage.cost_reason + ")" : ""));
    }
  }
  info.textContent = bits.filter(function (x) { return x !== null && x !== undefined && x !== ""; }).join(" · ");
  var details = el("details", "config");
  details.appendChild(el("summary", null, "configuration, prompts and versions"));
  details.appendChild(el("pre", null, JSON.stringify({ config: DATA.run.config, prompts: DATA.run.prompts, versions: DATA.run.versions }, null, 2)));
  info.appendChild(details);
  document.getElementById("filter").addEventListener("input", function (ev) {
    state.filter = ev.target.value.trim();
    renderRows();
  });
  renderHeader();
  renderRows();
  /* A link to RUN/report.html#<feature id> opens that feature. */
  if (location.hash.length > 1) {
    var want = "";
    try { want = decodeURIComponent(location.hash.slice(1)); } catch (e) { want = ""; }
    for (var k = 0; k < FEATURES.length; k++) {
      if (FEATURES[k].id === want) { openFeature(k); break; }
    }
  }
  document.body.dataset.ready = "1";
})();
