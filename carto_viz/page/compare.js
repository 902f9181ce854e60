// Cartography compare page (carto_viz/page/compare.js): the layer around its three Vega views.
// - "pair" chooses which two studies are compared (A, B); "class" the concept graphs shown;
// - a click on a unit in the map shows its patches beside its match's in the other studies;
// - the concepts only one model has (matched by words where both studies have them, else by
//   images), and those whose label changed (by images), as tables.
// Text from data only ever reaches the DOM through textContent, never as markup.
(function () {
  "use strict";
  function parse(id) { return JSON.parse(document.getElementById(id).textContent); }
  var data = parse("compare-data");
  var sheets = parse("compare-sheets");
  var specs = {
    projection: parse("compare-spec-projection"),
    matrix: parse("compare-spec-matrix"),
    graph: parse("compare-spec-graph")
  };
  var LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  var views = {};
  window.compareViews = views;  // for tests and the console
  var units = new Map();
  data.units.forEach(function (u) {
    units.set(u[0], { id: u[0], study: u[1], layer: u[2], channel: u[3], kind: u[4],
      cluster: u[5], label: u[6] });
  });
  var pair = [0, 1];

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function studyName(i) { return LETTERS[i] + " · " + data.studies[i].study; }
  function describe(u) {
    return studyName(u.study) + " · " + (u.kind === "feature" ? "feature " : "channel ") +
      u.channel + " · " + u.layer;
  }

  // ---- header ---------------------------------------------------------------------------
  document.getElementById("title").textContent = "Comparison " + data.name;
  var list = document.getElementById("studies");
  data.studies.forEach(function (s, i) {
    var li = el("li");
    li.appendChild(el("b", LETTERS[i]));
    var epoch = s.checkpoint_epoch === null ? "" : " after epoch " + s.checkpoint_epoch;
    var seed = s.training_seed === null ? "" : ", training seed " + s.training_seed;
    li.appendChild(document.createTextNode(s.study + ": " + s.model + epoch + seed + " (" +
      s.n_units + " units, top " + s.top_k + " of " + s.n_images + " images)"));
    list.appendChild(li);
  });
  function fmt(x) { return x === null || x === undefined ? "n/a" : (100 * x).toFixed(1) + "%"; }
  function showFigures() {
    var key = pair[0] + "|" + pair[1];
    var f = data.figures.filter(function (r) { return r.pair === key; })[0];
    var text = "";
    if (f) {
      text = "Units of A with a mutual match in B: " + fmt(f.mutual_share) +
        " (shuffled-image null " + fmt(f.null_share) + "). Concepts of A: " + f.shared +
        " shared with B, " + f.only + " only in A" + (f.matched_by === "formula" ?
        " (matched by words; " + f.without_words + " clusters of A without words)." :
        " (matched by top images).");
    }
    document.getElementById("figures").textContent = text;
  }
  // Studies without words (mapped before words, or with labels.enabled: false): one line.
  document.getElementById("words-note").textContent = data.no_words.map(function (name) {
    return "Study " + name + " has no words (no cluster_labels): its concepts are matched " +
      "by their top images, not by words.";
  }).join(" ");
  function byWords(a, b) {
    var f = data.figures.filter(function (r) { return r.pair === a + "|" + b; })[0];
    return Boolean(f && f.matched_by === "formula");
  }

  // ---- patches from sprite sheets -------------------------------------------------------
  function patchRow(unitId) {
    var row = el("div", null, "patches");
    var slot = data.patches.slots[unitId];
    if (!slot) { row.appendChild(el("span", "no patches", "note")); return row; }
    var sheet = data.patches.sheets[slot[0]];
    var url = sheets[sheet.name];
    var scale = 44 / sheet.tile;
    for (var r = 0; r < slot[2]; r++) {
      var t = slot[1] + r;
      var cell = el("div", null, "patch");
      cell.style.backgroundImage = "url(\"" + url + "\")";
      cell.style.backgroundSize = (sheet.columns * 44) + "px auto";
      cell.style.backgroundPosition = (-(t % sheet.columns) * sheet.tile * scale) + "px " +
        (-Math.floor(t / sheet.columns) * sheet.tile * scale) + "px";
      row.appendChild(cell);
    }
    return row;
  }

  // ---- the selected unit and its matches --------------------------------------------------
  function jump(unitId) {
    return function () {
      showUnit(unitId);
      var view = views.projection;
      if (!view) return;
      // Move the map's selection too: replace the tuple in its store (Vega-Lite's "pick_store").
      var old = view.data("pick_store");
      var tuple = { unit: old.length ? old[0].unit : "", fields: old.length ? old[0].fields :
        [{ field: "unit_id", type: "E" }], values: [unitId] };
      view.data("pick_store", [tuple]).runAsync();
    };
  }
  function unitBlock(unitId, heading) {
    var u = units.get(unitId);
    var box = el("div");
    box.appendChild(el("div", heading + describe(u), "who"));
    box.appendChild(el("div", "concept: " + (u.label || "none"), "note"));
    box.appendChild(patchRow(unitId));
    return box;
  }
  function showUnit(unitId) {
    var panel = document.getElementById("unit");
    panel.replaceChildren();
    var u = units.get(unitId);
    if (!u) return;
    panel.appendChild(unitBlock(unitId, ""));
    var found = data.matches[unitId] || [];
    data.studies.forEach(function (s, i) {
      if (i === u.study) return;
      var m = found.filter(function (x) { return x[0] === i; })[0];
      if (!m) {
        panel.appendChild(el("div", "no match in " + studyName(i) + " at the threshold", "who"));
        return;
      }
      var box = unitBlock(m[1], "best match: ");
      box.appendChild(el("div", "Jaccard " + m[2].toFixed(2) + (m[3] ? ", mutual" :
        ", not mutual (its own best match is another unit)"), "note"));
      var go = el("button", "select it");
      go.addEventListener("click", jump(m[1]));
      box.appendChild(go);
      panel.appendChild(box);
    });
    var near = data.neighbors[unitId] || [];
    if (near.length) {
      panel.appendChild(el("div", "nearest units of other studies (joint embedding)", "who"));
      var ul = el("ul");
      near.forEach(function (n) {
        var li = el("li");
        var b = el("button", describe(units.get(n[0])));
        b.addEventListener("click", jump(n[0]));
        li.appendChild(b);
        li.appendChild(document.createTextNode(" (cosine " + n[1].toFixed(2) + ")"));
        ul.appendChild(li);
      });
      panel.appendChild(ul);
    }
  }

  // ---- concept tables ---------------------------------------------------------------------
  function table(rows, header) {
    var t = el("table");
    var tr = el("tr");
    header.forEach(function (h) { tr.appendChild(el("th", h)); });
    t.appendChild(tr);
    rows.forEach(function (r) {
      var row = el("tr");
      r.forEach(function (c) { row.appendChild(el("td", c)); });
      t.appendChild(row);
    });
    return t;
  }
  function showConcepts() {
    var only = document.getElementById("only");
    only.replaceChildren();
    [[pair[0], pair[1]], [pair[1], pair[0]]].forEach(function (p) {
      var rows = data.only.filter(function (r) { return r[0] === p[0] && r[1] === p[1]; });
      only.appendChild(el("div", "only in " + studyName(p[0]) + " (" + rows.length + ")", "who"));
      if (!rows.length) { only.appendChild(el("div", "none", "empty")); return; }
      var words = byWords(p[0], p[1]);
      only.appendChild(table(rows.slice(0, 40).map(function (r) {
        return [r[3], r[4], r[5], r[6]];
      }), ["layer", "units", words ? "words · AUC" : "label",
        words ? "a term in " + LETTERS[p[1]] : "same label in " + LETTERS[p[1]]]));
      if (rows.length > 40) only.appendChild(el("div", (rows.length - 40) + " more", "empty"));
    });
    var changed = document.getElementById("changed");
    changed.replaceChildren();
    var rows = data.label_changed.filter(function (r) {
      return r[0] === pair[0] && r[1] === pair[1];
    });
    if (!rows.length) {
      changed.appendChild(el("div", byWords(pair[0], pair[1]) ? "none: matched by words, a " +
        "shared concept has the same words in both" : "none", "empty"));
      return;
    }
    changed.appendChild(table(rows.slice(0, 40).map(function (r) { return [r[3], r[4]]; }),
      ["label in " + LETTERS[pair[0]], "label of its match in " + LETTERS[pair[1]]]));
  }

  // ---- controls -----------------------------------------------------------------------------
  var pairSelect = document.getElementById("pair");
  data.studies.forEach(function (_, a) {
    data.studies.forEach(function (_, b) {
      if (a === b) return;
      var option = el("option", LETTERS[a] + " against " + LETTERS[b]);
      option.value = a + "|" + b;
      pairSelect.appendChild(option);
    });
  });
  var classSelect = document.getElementById("class");
  data.classes.forEach(function (c) {
    var option = el("option", c.label_name);
    option.value = String(c.label);
    classSelect.appendChild(option);
  });
  pairSelect.addEventListener("change", function () {
    pair = pairSelect.value.split("|").map(Number);
    ["matrix", "graph"].forEach(function (name) {
      if (views[name]) views[name].signal("pair", pairSelect.value).runAsync();
    });
    showFigures();
    showConcepts();
  });
  classSelect.addEventListener("change", function () {
    if (views.graph) views.graph.signal("cls", Number(classSelect.value)).runAsync();
  });

  showFigures();
  showConcepts();
  var options = { actions: false, renderer: "canvas" };
  Promise.all([
    vegaEmbed("#projection", specs.projection, options),
    vegaEmbed("#matrix", specs.matrix, options),
    vegaEmbed("#graph", specs.graph, options)
  ]).then(function (results) {
    views.projection = results[0].view;
    views.matrix = results[1].view;
    views.graph = results[2].view;
    views.projection.addSignalListener("pick", function (_, value) {
      if (value && value.unit_id && value.unit_id.length) showUnit(value.unit_id[0]);
    });
    document.body.setAttribute("data-ready", "true");
  }).catch(function (error) {
    document.body.setAttribute("data-error", String(error));
    throw error;
  });
})();
