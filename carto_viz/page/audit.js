// What each class relies on (carto_viz/page/audit.js), in pages of studies with an audit
// (carto_viz/audit.py); it runs after page.js and talks to it through what page.js shares on
// window (cartoViews, cartoChunk) and the body's data-class attribute.
// - the selected class's "relies on" chart: its terms by relevance share, the class's own term
//   and the rest told apart, flagged terms marked, the evidence on hover;
// - clicking a term rings its units in the map (the word search's `word_units` signal) and shows
//   its evidence and the class's images where zeroing its units mattered most.
// Text from data only ever reaches the DOM through textContent, never as markup.
(function () {
  "use strict";
  var page = JSON.parse(document.getElementById("carto-page").textContent);
  var audit = page.audit;
  if (!audit) return;
  var panel = document.getElementById("audit");
  var legend = document.getElementById("audit-legend");
  var chart = document.getElementById("audit-chart");
  var termBox = document.getElementById("audit-term");
  var BAR_PX = 240;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  function decodeIds(text) {  // base-36 gaps joined by "." (carto_viz/class_graphs.encode_ids)
    var out = [], v = 0;
    if (text) text.split(".").forEach(function (g) { v += parseInt(g, 36); out.push(v); });
    return out;
  }
  function barList(ids) { return ids.length ? "|" + ids.join("|") + "|" : "|"; }
  function plural(n, one) { return n + " " + one + (n === 1 ? "" : "s"); }
  function given(x) { return x !== null && x !== undefined; }
  function pct(x) { return given(x) ? (100 * x).toFixed(1) + "%" : "?"; }
  function num(x) { return given(x) ? Number(x).toFixed(2) : "?"; }
  function verdict(x) { return x === true ? "confirms" : x === false ? "does not confirm" : "?"; }

  // ---- thumbnails: sheets inline or in sidecar scripts, through page.js's chunk loader ------
  var sheets = new Map();
  function sheet(index) {
    if (!sheets.has(index)) {
      var url = window.cartoLoadChunk(audit.thumbs.sheets[index].name);
      sheets.set(index, url.then(function (href) {
        return new Promise(function (resolve, reject) {
          var img = new Image();
          img.onload = function () { resolve(img); };
          img.onerror = function () { reject(new Error("undecodable sprite sheet")); };
          img.src = href;
        });
      }));
    }
    return sheets.get(index);
  }
  function thumbUrl(imageId) {
    var slot = audit.thumbs && audit.thumbs.slots[imageId];
    if (!slot) return Promise.reject(new Error("no thumbnail of image " + imageId));
    var s = audit.thumbs.sheets[slot[0]];
    return sheet(slot[0]).then(function (img) {
      var canvas = document.createElement("canvas");
      canvas.width = s.tile; canvas.height = s.tile;
      canvas.getContext("2d").drawImage(img, (slot[1] % s.columns) * s.tile,
        Math.floor(slot[1] / s.columns) * s.tile, s.tile, s.tile, 0, 0, s.tile, s.tile);
      return canvas.toDataURL("image/png");
    });
  }

  // ---- the chart -------------------------------------------------------------------------
  function terms(label) {
    return (audit.classes[String(label)] || []).map(function (values) {
      var r = {};
      audit.columns.forEach(function (c, i) { r[c] = values[i]; });
      return r;
    });
  }
  function evidence(r) {
    var lines = [
      ["relevance share", r.units ? pct(r.relevance_share) + " (rank " + r.rank + "), most at " +
        r.top_layer + ": " + pct(r.top_layer_share) + " over " + plural(r.units, "unit")
        : "none: no unit's words name it"],
      ["lift", given(r.lift) ? num(r.lift) + "× its mean share over the other classes"
        : r.relevance_share > 0 ? "no other class's units carry it" : "no class's units carry it"],
      ["co-occurrence", "holds on " + pct(r.class_rate) + " of the class's images, " +
        pct(r.other_rate) + " of the others'"]
    ];
    if (r.checked) {
      lines.push(["ablation", "zeroing its " + plural(r.ablation_units || 0, "unit") +
        " drops the class logit by " + num(r.ablation_drop) + " on " +
        plural(r.ablation_images || 0, "image") + " (as many random units: " +
        num(r.ablation_random_drop) + ", the other classes' logits: " +
        num(r.ablation_other_drop) + "): " + verdict(r.ablation_confirms)]);
      if (given(r.counterfactual_images)) {
        lines.push(["counterfactual", plural(r.counterfactual_images, "image") +
          " re-rendered with it changed: accuracy " + pct(r.accuracy) + " → " +
          pct(r.counterfactual_accuracy) + ", mean logit " + num(r.logit) + " → " +
          num(r.counterfactual_logit) + ": " + verdict(r.counterfactual_confirms)]);
      }
    }
    if (r.flagged) {
      lines.push(["flagged by", r.flagged_by === "counterfactual"
        ? "the counterfactual: re-rendered without it, the class's images lose their logit"
        : "its relevance: a large, class-specific share that co-occurs with the class"]);
    }
    lines.push(["confirmed", r.confirmed === true ? "yes: the model uses it (the counterfactual " +
        "where it ran, else the ablation)"
      : r.confirmed === false ? "no: it only co-occurs with the class"
      : r.checked ? "no check could run" : "not checked (only flagged and co-occurring terms " +
        "are)"]);
    return lines;
  }
  (function () {
    [["own", "the class's own term"], ["other", "another term"], ["flagged", "flagged ⚑"]]
      .forEach(function (s) {
        legend.appendChild(el("span", "swatch " + s[0]));
        legend.appendChild(document.createTextNode(s[1]));
      });
    legend.appendChild(el("div", null, "Bars: each term's share of the class's relevance. " +
      "Hover a term for its evidence; click it for its units in the map and the images."));
  })();

  var ringed = false, shownLabel = null;
  function ring(ids) {  // the word search's ring in the map
    var views = window.cartoViews;
    if (!views || !page.words) return Promise.resolve();
    ringed = ids !== null;
    return views.projection.signal("word_units", barList(ids || [])).runAsync();
  }
  var words = document.getElementById("word-search");
  if (words) {  // the word search now owns the rings
    words.addEventListener("input", function () { ringed = false; });
  }
  function render(label) {
    shownLabel = label;
    chart.textContent = "";
    termBox.textContent = "";
    termBox.hidden = true;
    document.body.removeAttribute("data-audit-term");
    if (ringed) ring(null);
    panel.hidden = false;
    var rows = terms(label);
    if (!rows.length) { chart.appendChild(el("div", "none", "no audit for this class")); return; }
    var top = Math.max.apply(null, rows.map(function (r) { return r.relevance_share || 0; }));
    rows.forEach(function (r) {
      var b = el("button", "term" + (r.own ? " own" : "") + (r.flagged ? " flagged" : ""));
      b.type = "button";
      b.setAttribute("data-term", r.term);
      b.setAttribute("aria-pressed", "false");
      b.title = r.term + "\n" + evidence(r).map(function (l) { return l[0] + ": " + l[1]; })
        .join("\n");
      b.appendChild(el("span", "name", r.term));
      var track = el("span", "track"), bar = el("span", "bar");
      var share = Math.max(0, r.relevance_share || 0);
      bar.style.width = Math.max(1, Math.round(BAR_PX * share / (top > 0 ? top : 1))) + "px";
      track.appendChild(bar);
      b.appendChild(track);
      b.appendChild(el("span", "share", pct(r.relevance_share)));
      if (r.flagged) {
        b.appendChild(el("span", "mark", "⚑ flagged" +
          (r.flagged_by === "counterfactual" ? " by the counterfactual" : "") +
          (r.confirmed === true ? ", confirmed"
          : r.confirmed === false ? ", not confirmed" : "")));
      } else if (r.own) {
        b.appendChild(el("span", "mark", "own"));
      }
      b.addEventListener("click", function () { showTerm(label, r); });
      chart.appendChild(b);
    });
  }
  function showTerm(label, r) {
    Array.prototype.forEach.call(chart.querySelectorAll("button.term"), function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-term") === r.term ? "true" : "false");
    });
    var ids = decodeIds(audit.units[r.term]);
    var images = (audit.images[String(label)] || {})[r.term] || [];
    termBox.textContent = "";
    termBox.hidden = false;
    var head = el("div", "line");
    head.appendChild(el("b", null, r.term));
    head.appendChild(document.createTextNode(r.own ? " (the class's own term)"
      : r.flagged ? " (flagged)" : ""));
    termBox.appendChild(head);
    evidence(r).forEach(function (l) {
      var line = el("div", "line");
      line.appendChild(el("b", null, l[0] + ":"));
      line.appendChild(document.createTextNode(l[1]));
      termBox.appendChild(line);
    });
    termBox.appendChild(el("div", "line", ids.length ? plural(ids.length, "unit") +
      " whose words name it, ringed in the map" : "no unit's words name it"));
    if (images.length) {
      termBox.appendChild(el("div", "line", "The class's images where zeroing its units " +
        "dropped the class logit most:"));
      var strip = el("div", "strip");
      images.forEach(function (x) {
        var fig = el("figure");
        fig.setAttribute("data-image", String(x[0]));
        fig.title = "#" + x[0] + ": the class logit drops by " + num(x[1]);
        if (audit.thumbs && audit.thumbs.slots[x[0]]) {  // else listed by id only
          var img = el("img");
          img.alt = "#" + x[0];
          fig.appendChild(img);
          thumbUrl(x[0]).then(function (url) { img.src = url; }, function () {});
        }
        fig.appendChild(el("figcaption", null, "#" + x[0] + " −" + num(x[1])));
        strip.appendChild(fig);
      });
      termBox.appendChild(strip);
    }
    document.body.setAttribute("data-audit-term", r.term);
    window.cartoAudit = { label: label, term: r.term, units: ids,
      images: images.map(function (x) { return x[0]; }) };
    return ring(ids);
  }
  window.cartoAuditTerm = function (term) {  // as a click on the term's bar (tests, links)
    var r = terms(shownLabel).filter(function (x) { return x.term === term; })[0];
    return r ? showTerm(shownLabel, r) : Promise.resolve();
  };

  // The class is page.js's: follow the body's data-class (page.js may have set it already).
  function follow() {
    var label = document.body.getAttribute("data-class");
    if (label !== null && label !== String(shownLabel)) render(Number(label));
  }
  new MutationObserver(follow).observe(document.body,
    { attributes: true, attributeFilter: ["data-class"] });
  follow();
})();
