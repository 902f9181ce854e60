// Cartography page: the thin layer around the two Vega views (carto_viz/page/page.js).
// - a loader that cuts "patch:<neuron>:<rank>" images out of sprite sheets, loaded lazily;
// - class search (type-ahead) that loads the class's compact graph, decodes it (decodeGraph)
//   and swaps it into the Graph View;
// - the header, hover cards with patches, and the links between the two views;
// - with words (unit_labels): the hovered or selected unit's scorecard, and the word search
//   (units and clusters whose formula holds the text, ringed in both views; the classes that
//   use those clusters);
// - the units toggle (channels / features / both) for studies with dictionary features: it
//   sets the views' `unit_kind` signal, which filters points, detail rows and graph rows.
// Text from data only ever reaches the DOM through textContent, never as markup.
(function () {
  "use strict";
  var page = JSON.parse(document.getElementById("carto-page").textContent);
  var specs = {
    projection: JSON.parse(document.getElementById("carto-spec-projection").textContent),
    detail: JSON.parse(document.getElementById("carto-spec-detail").textContent),
    graph: JSON.parse(document.getElementById("carto-spec-graph").textContent)
  };
  var CHUNK_NAME = /^[a-z]+-[0-9]{4}$/;
  var PATCH_KEY = /^(patch|thumb|image):([0-9]+):([0-9]+)$/;
  var MAX_PATCHES = 9;

  // ---- chunks: inline <script type="application/json"> or sidecar scripts ----------------
  var chunks = new Map();
  var waiting = new Map();
  window.cartoChunk = function (name, payload) {
    var w = waiting.get(name);
    if (w) { waiting.delete(name); w(payload); }
  };
  function loadChunk(name) {
    if (!CHUNK_NAME.test(name)) return Promise.reject(new Error("bad chunk name"));
    if (!chunks.has(name)) {
      var inline = document.getElementById("carto-chunk-" + name);
      var promise = inline ? Promise.resolve(JSON.parse(inline.textContent))
        : new Promise(function (resolve, reject) {
          waiting.set(name, resolve);
          var script = document.createElement("script");
          script.src = page.data_dir + "/" + name + ".js";
          script.onerror = function () { reject(new Error("missing " + script.src)); };
          document.head.appendChild(script);
        });
      chunks.set(name, promise);
    }
    return chunks.get(name);
  }
  // The one loader of chunks: audit.js (in the page only with the audit) loads its sheets here.
  window.cartoLoadChunk = loadChunk;

  // ---- patches: cut out of sprite sheets, each sheet decoded once ----------------------
  function Atlas(manifest) {
    this.manifest = manifest;
    this.images = new Map();
    this.urls = new Map();
  }
  Atlas.prototype.count = function (neuron) {
    var slot = this.manifest.slots[neuron];
    return slot ? slot[2] : 0;
  };
  Atlas.prototype.sheet = function (index) {
    if (!this.images.has(index)) {
      this.images.set(index, loadChunk(this.manifest.sheets[index].name).then(function (url) {
        return new Promise(function (resolve, reject) {
          var img = new Image();
          img.onload = function () { resolve(img); };
          img.onerror = function () { reject(new Error("undecodable sprite sheet")); };
          img.src = url;
        });
      }));
    }
    return this.images.get(index);
  };
  Atlas.prototype.url = function (neuron, rank) {
    var key = neuron + ":" + rank;
    if (!this.urls.has(key)) {
      var slot = this.manifest.slots[neuron];
      if (!slot || rank < 1 || rank > slot[2]) return Promise.reject(new Error("no patch " + key));
      var sheet = this.manifest.sheets[slot[0]];
      this.urls.set(key, this.sheet(slot[0]).then(function (img) {
        var tile = sheet.tile, t = slot[1] + rank - 1;
        var canvas = document.createElement("canvas");
        canvas.width = tile; canvas.height = tile;
        canvas.getContext("2d").drawImage(img, (t % sheet.columns) * tile,
          Math.floor(t / sheet.columns) * tile, tile, tile, 0, 0, tile, tile);
        return canvas.toDataURL("image/png");
      }));
    }
    return this.urls.get(key);
  };
  var atlases = { patch: new Atlas(page.patches), thumb: new Atlas(page.thumbs) };
  if (page.images) atlases.image = new Atlas(page.images);  // the explained images
  function patchCount(neuron) { return atlases.patch.count(neuron); }
  function patchUrl(neuron, rank) { return atlases.patch.url(neuron, rank); }
  window.cartoPatchUrl = patchUrl;

  // Vega loads nothing: all data is inline; images are only our patch keys.
  function refuse() { return Promise.reject(new Error("Cartography pages load no data")); }
  var loader = {
    options: {}, load: refuse, file: refuse, http: refuse,
    sanitize: function (uri, options) {
      var m = PATCH_KEY.exec(String(uri));
      if (!m || !options || options.context !== "image") {
        return Promise.reject(new Error("refused URL"));
      }
      return atlases[m[1]].url(+m[2], +m[3]).then(function (href) {
        return { href: href, crossOrigin: null };
      });
    }
  };

  // ---- header ----------------------------------------------------------------------------
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  (function header() {
    var s = page.summary;
    document.getElementById("study-title").textContent = s.title;
    document.title = s.title + " — Cartography";
    var facts = document.getElementById("study-facts");
    s.facts.forEach(function (f) {
      var span = el("span");
      span.appendChild(el("b", null, f[0]));
      span.appendChild(document.createTextNode(f[1]));
      facts.appendChild(span);
    });
    var quality = document.getElementById("study-quality");
    s.quality.forEach(function (q) {
      // One short line per figure; the whole value, what it measures and where on hover.
      var li = el("li");
      li.title = q.figure + ": " + q.value + "\n" + (q.definition || "") + " (" + q.asset + ")";
      li.appendChild(el("b", null, q.figure + ": "));
      li.appendChild(document.createTextNode(q.value + " "));
      li.appendChild(el("span", "asset", "(" + q.asset + ")"));
      quality.appendChild(li);
    });
    if (!s.quality.length) quality.appendChild(el("li", null, "no quality figures measured yet"));
  })();

  // ---- neurons by cluster (for hover cards) ------------------------------------------------
  var neurons = specs.projection.datasets.neurons;
  var byNeuron = new Map(), byCluster = new Map();
  neurons.forEach(function (n) {
    byNeuron.set(n.neuron_id, n);
    if (!byCluster.has(n.cluster_id)) byCluster.set(n.cluster_id, []);
    byCluster.get(n.cluster_id).push(n.neuron_id);
  });

  // ---- scorecard: the hovered unit's words, else the selected one's (studies with words) ----
  var scorecard = document.getElementById("scorecard");
  var selectedUnit = -1;
  function auc(x) { return x === null || x === undefined ? "?" : Number(x).toFixed(2); }
  function pValue(p) {
    if (p === null || p === undefined) return "?";
    if (p === 0) return "< 1e-300";  // below what a double holds
    return p < 1e-3 ? Number(p).toExponential(1) : Number(p).toFixed(3);
  }
  function plural(n, one) { return n + " " + one + (n === 1 ? "" : "s"); }
  function scoreLine(name, text, cls) {
    var line = el("div", "line");
    line.appendChild(el("b", null, name));
    line.appendChild(document.createTextNode(" "));
    line.appendChild(el("span", cls, text));
    scorecard.appendChild(line);
  }
  function showScorecard(id) {
    if (!page.words) return;
    var n = byNeuron.get(id);
    scorecard.textContent = "";
    scorecard.hidden = !n;
    scorecard.setAttribute("data-neuron", n ? String(id) : "");
    if (!n) return;
    var none = n.words === null || n.words === undefined;
    scoreLine("#" + n.neuron_id, n.unit);
    scoreLine("words:", none ? "no word fits" : n.words, "words");
    scoreLine("AUC", auc(n.words_auc) + ", p-value " + pValue(n.p_value) +
      (none ? " (its best try)" : ""));
    scoreLine("best single term:", (n.single_term || "none") + " (AUC " + auc(n.single_auc) + ")",
      "words");
    scoreLine("polysemantic:", plural(n.n_terms_over_08 || 0, "term") + " reach AUC 0.8");
    scoreLine("shared by", none ? "no words to share" :
      plural(n.n_sharing_formula || 0, "other unit"));
    if (n.on_share !== null && n.on_share !== undefined) {
      scoreLine("on for", Math.round(100 * n.on_share) + "% of images" +
        (n.always_on ? " (always on: a fixed part of a logit, whatever the image)" : ""),
        n.always_on ? "always-on" : null);
    }
    scoreLine("cluster " + n.cluster_id + ":", n.cluster_short, "words");
  }
  window.cartoScorecard = showScorecard;

  // ---- hover cards -----------------------------------------------------------------------
  var card = document.getElementById("carto-card");
  var hoverToken = 0;
  function patchRow(neuron, label) {
    var row = el("div", "row");
    row.appendChild(el("span", "who", label));
    var n = Math.min(patchCount(neuron), MAX_PATCHES), pending = [];
    for (var r = 1; r <= n; r++) {
      var img = el("img");
      img.alt = "";
      row.appendChild(img);
      pending.push(patchUrl(neuron, r).then((function (im) {
        return function (url) { im.src = url; return im.decode ? im.decode().catch(function () {}) : null; };
      })(img)));
    }
    return { row: row, pending: pending };
  }
  function tooltip(handler, event, item, value) {
    var token = ++hoverToken;
    var started = performance.now();
    if (value === null || value === undefined || value === "") {
      card.hidden = true;
      showScorecard(selectedUnit);
      return;
    }
    card.textContent = "";
    var entries = typeof value === "object" ? Object.keys(value).map(function (k) {
      return [k, value[k]];
    }) : [["", value]];
    entries.forEach(function (kv) {
      var line = el("div", "line");
      if (kv[0]) line.appendChild(el("b", null, kv[0]));
      line.appendChild(document.createTextNode(kv[1] === null ? "" : String(kv[1])));
      card.appendChild(line);
    });
    var datum = (item && item.datum) || {};
    var pending = [];
    if (datum.n_patches !== undefined && datum.neuron_id !== undefined) {
      showScorecard(datum.neuron_id);
      var one = patchRow(datum.neuron_id, "#" + datum.neuron_id);
      card.appendChild(one.row);
      pending = one.pending;
    } else if (datum.strength !== undefined && datum.cluster_id >= 0) {
      var members = byCluster.get(datum.cluster_id) || [];
      members.slice(0, 6).forEach(function (m) {
        var r = patchRow(m, "#" + m);
        card.appendChild(r.row);
        pending = pending.concat(r.pending);
      });
      if (members.length > 6) card.appendChild(el("div", "more", "+" + (members.length - 6) + " more neurons: click the node"));
    }
    card.hidden = false;
    var x = event.clientX + 16, y = event.clientY + 12;
    var w = card.offsetWidth, h = card.offsetHeight;
    if (x + w > window.innerWidth - 4) x = Math.max(4, event.clientX - w - 16);
    if (y + h > window.innerHeight - 4) y = Math.max(4, window.innerHeight - h - 4);
    card.style.left = x + "px";
    card.style.top = y + "px";
    Promise.all(pending).then(function () {
      if (token === hoverToken) {
        window.cartoHover = { ms: performance.now() - started, images: pending.length };
      }
    }, function () {});
  }

  // ---- class search ----------------------------------------------------------------------
  var classes = page.classes;
  var byLabel = new Map(classes.map(function (c) { return [c.label, c]; }));
  var input = document.getElementById("class-search");
  var list = document.getElementById("class-options");
  var note = document.getElementById("class-note");
  var active = -1, shown = [];
  function matches(query) {
    var q = query.trim().toLowerCase();
    if (!q) return classes.slice(0, 50);
    var prefix = [], inner = [];
    for (var i = 0; i < classes.length; i++) {
      var c = classes[i], name = c.name.toLowerCase(), id = String(c.label);
      if (name.indexOf(q) === 0 || id === q || id.indexOf(q) === 0) prefix.push(c);
      else if (name.indexOf(q) > 0) inner.push(c);
      if (prefix.length >= 50) break;
    }
    return prefix.concat(inner).slice(0, 50);
  }
  function renderOptions() {
    list.textContent = "";
    shown.forEach(function (c, i) {
      var li = el("li");
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", i === active ? "true" : "false");
      li.appendChild(document.createTextNode(c.name));
      li.appendChild(el("span", "id", "#" + c.label + (c.graph ? "" : " (no graph)")));
      li.addEventListener("mousedown", function (e) { e.preventDefault(); choose(c.label); });
      list.appendChild(li);
    });
    list.hidden = shown.length === 0;
    input.setAttribute("aria-expanded", list.hidden ? "false" : "true");
  }
  input.addEventListener("input", function () {
    shown = matches(input.value); active = shown.length ? 0 : -1; renderOptions();
  });
  input.addEventListener("focus", function () {
    input.select(); shown = matches(""); active = -1; renderOptions();
  });
  input.addEventListener("blur", function () { list.hidden = true; });
  input.addEventListener("keydown", function (e) {
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      if (!shown.length) return;
      active = (active + (e.key === "ArrowDown" ? 1 : shown.length - 1)) % shown.length;
      renderOptions();
    } else if (e.key === "Enter") {
      e.preventDefault();
      if (active >= 0 && shown[active]) choose(shown[active].label);
    } else if (e.key === "Escape") {
      list.hidden = true;
    }
  });
  function choose(label) {
    list.hidden = true;
    input.blur();
    return setClass(label);
  }

  // ---- views and their links ---------------------------------------------------------------
  var views = {};
  // ---- class graphs: compact chunks (carto_viz/class_graphs.py) decoded into the view's records ----
  var graphRows = specs.graph.datasets.graph_rows;
  var rowInfo = new Map(graphRows.map(function (r) { return [r.row, r]; }));
  var topRow = graphRows.length ? graphRows[graphRows.length - 1].row : 0;
  var clusterInfo = new Map();
  (function () {
    var t = page.clusters || {};
    (t.c || []).forEach(function (c, i) {
      clusterInfo.set(c, { row: t.r[i], size: t.s[i], label: t.l[i], short: t.h[i] });
    });
  })();
  function round4(x) { return Math.round(x * 1e4) / 1e4; }
  function barList(ids) { return ids.length ? "|" + ids.join("|") + "|" : "|"; }
  function decodeIds(text) {  // base-36 gaps joined by "."
    var out = [], v = 0;
    if (text) text.split(".").forEach(function (g) { v += parseInt(g, 36); out.push(v); });
    return out;
  }
  function walk(start, step) {  // the chain of first steps from a node
    var chain = [], seen = new Set([start]), c = step.get(start);
    while (c !== undefined && c !== null && !seen.has(c)) { chain.push(c); seen.add(c); c = step.get(c); }
    return chain;
  }
  function cascadeOf(c, down, up) {
    var below = walk(c, down), above = walk(c, up), edges = new Set();
    [[below, true], [above, false]].forEach(function (pair) {
      var previous = c;
      pair[0].forEach(function (m) {
        edges.add(pair[1] ? m + "-" + previous : previous + "-" + m);
        previous = m;
      });
    });
    var members = Array.from(new Set([c].concat(below, above))).sort(function (a, b) { return a - b; });
    return [barList(members), edges.size ? "|" + Array.from(edges).sort().join("|") + "|" : "|"];
  }
  function decodeGraph(label, g) {
    var n = g.n || {}, e = g.e || {}, ids = n.c || [];
    var down = new Map(), up = new Map(), top = 0;
    ids.forEach(function (c, i) { down.set(c, n.d[i]); up.set(c, n.u[i]); top = Math.max(top, n.i[i]); });
    var nodes = ids.map(function (c, i) {
      var info = clusterInfo.get(c), row = rowInfo.get(info.row), cascade = cascadeOf(c, down, up);
      return {
        cluster_id: c, layer: row.name, kind: row.kind, row: info.row, col: n.k[i],
        importance: n.i[i], strength: top > 0 ? round4(n.i[i] / top) : 1, size: info.size,
        cluster_label: info.label, short: info.short, patch: n.p[i],
        cascade: cascade[0], cascade_edges: cascade[1]
      };
    });
    if (ids.length) {
      var name = (byLabel.get(label) || { name: "" }).name;
      // The prediction node shows the class: one of its images the model gets right where
      // the study explains images, else its top patch.
      var own = atlases.image ? (g.x || []).filter(function (x) { return x.p === label; })[0] : null;
      nodes.push({
        cluster_id: -1, layer: "prediction", kind: "prediction", row: topRow, col: 0,
        importance: null, strength: 1, size: 0, cluster_label: "prediction: " + name,
        short: name, patch: g.p, picture: own ? "image:" + own.i + ":1" : null,
        cascade: "|-1|", cascade_edges: "|"
      });
    }
    var at = new Map(nodes.map(function (x) { return [x.cluster_id, x]; }));
    var weights = e.w || [], heaviest = Math.max.apply(null, [0].concat(weights));
    var edges = (e.s || []).map(function (s, i) {
      var a = at.get(s), b = at.get(e.t[i]);
      return {
        source_cluster: s, target_cluster: e.t[i], col: a.col, row: a.row, col2: b.col,
        row2: b.row, weight: weights[i], weight_rel: heaviest > 0 ? round4(weights[i] / heaviest) : 0,
        min_strength: Math.min(a.strength, b.strength)
      };
    });
    return { nodes: nodes, edges: edges, neurons: barList(decodeIds(g.u)), images: g.x || [] };
  }
  window.cartoDecodeGraph = decodeGraph;
  function classGraph(label) {
    var c = byLabel.get(label);
    var none = { nodes: [], edges: [], neurons: "|", images: [] };
    if (!c || c.chunk < 0) return Promise.resolve(none);
    return loadChunk(page.graph_chunks[c.chunk]).then(function (chunk) {
      var g = chunk[String(label)];
      return g ? decodeGraph(label, g) : none;
    });
  }
  var classToken = 0;
  var nodeKinds = new Map();  // cluster -> kind of the current class's graph nodes
  var unitKind = "both";
  function showsKind(kind) { return unitKind === "both" || kind === unitKind; }
  function describeGraph() {
    var all = 0, concepts = 0, layers = 0;
    nodeKinds.forEach(function (kind, cluster) {
      if (cluster >= 0) { all++; if (showsKind(kind)) concepts++; }
    });
    graphRows.forEach(function (r) { if (r.kind !== "prediction" && showsKind(r.kind)) layers++; });
    note.textContent = all ? concepts + " concepts in " + layers + " layers"
      : "no concept graph for this class (no important clusters were found)";
  }
  function setClass(label) {
    var started = performance.now(), token = ++classToken;
    var c = byLabel.get(label);
    if (!c) return Promise.resolve();
    input.value = c.name;
    return classGraph(label).then(function (graph) {
      if (token !== classToken) return null;
      var g = views.graph;
      var nodes = graph.nodes, edges = graph.edges;
      nodeKinds = new Map(nodes.map(function (n) { return [n.cluster_id, n.kind]; }));
      g.data("node_pick_store", []);
      g.data("graph_nodes", nodes).data("graph_edges", edges).signal("graph_class", label);
      views.projection.signal("class_neurons", graph.neurons).signal("graph_node", -2);
      views.detail.signal("graph_node", -2);
      describeGraph();
      showImages(label, graph.images);
      document.body.setAttribute("data-class", String(label));
      return Promise.all([g.runAsync(), views.projection.runAsync(), views.detail.runAsync()]);
    }).then(function () {
      if (token === classToken) window.cartoClassSwitch = { label: label, ms: performance.now() - started };
    });
  }
  window.cartoSetClass = setClass;

  // ---- units: channels, features or both ----------------------------------------------------
  var units = document.getElementById("unit-kind");
  var UNIT_CHOICES = ["both", "channel", "feature"];
  function hidden(kind, shown) {
    return shown !== "both" && kind !== shown && kind !== "prediction";
  }
  function setUnits(kind) {
    if (UNIT_CHOICES.indexOf(kind) < 0) return Promise.resolve();
    var started = performance.now();
    var p = views.projection, g = views.graph, d = views.detail;
    // A selection of the kind now hidden goes (its listeners clear the linked signals).
    var pick = p.signal("pick");
    var picked = pick && pick.neuron_id ? byNeuron.get(pick.neuron_id[0]) : null;
    if (picked && hidden(picked.kind, kind)) p.data("pick_store", []);
    var nodePick = g.signal("node_pick");
    var node = nodePick && nodePick.cluster_id ? nodePick.cluster_id[0] : null;
    if (node !== null && hidden(nodeKinds.get(node), kind)) g.data("node_pick_store", []);
    p.signal("unit_kind", kind);
    d.signal("unit_kind", kind);
    g.signal("unit_kind", kind).height(page.graph_heights[kind]);
    var radio = units.querySelector("input[value=" + kind + "]");
    if (radio && !radio.checked) radio.checked = true;
    document.body.setAttribute("data-units", kind);
    unitKind = kind;
    describeGraph();
    return Promise.all([p.runAsync(), d.runAsync(), g.runAsync()]).then(function () {
      window.cartoUnits = { kind: kind, ms: performance.now() - started };
    });
  }
  window.cartoSetUnits = setUnits;
  function offerUnits() {  // once the views exist, and only with both kinds of unit
    if (page.unit_kinds.length < 2) return;
    units.hidden = false;
    units.addEventListener("change", function (e) {
      if (e.target && e.target.name === "unit-kind") setUnits(e.target.value);
    });
  }

  // ---- explained images: the class's strip, an image's card, a node's exemplars ------------
  var imagesPanel = document.getElementById("images");
  var strip = document.getElementById("image-strip");
  var card2 = document.getElementById("image-card");
  var nodeImages = document.getElementById("node-images");
  var SWATCHES = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4"];
  var shownImages = [];
  function imageButton(id, wrong, title, onclick) {
    var b = el("button", "image" + (wrong ? " wrong" : ""));
    b.type = "button";
    b.title = title;
    b.setAttribute("data-image", String(id));
    b.setAttribute("aria-pressed", "false");
    var img = el("img");
    img.alt = title;
    b.appendChild(img);
    atlases.image.url(id, 1).then(function (url) { img.src = url; }, function () {});
    b.addEventListener("click", onclick);
    return b;
  }
  function className(label) { var c = byLabel.get(label); return c ? c.name : "class " + label; }
  function showImages(label, images) {
    shownImages = images || [];
    strip.textContent = "";
    card2.textContent = "";
    card2.hidden = true;
    nodeImages.textContent = "";
    if (!atlases.image) { imagesPanel.hidden = true; return; }
    imagesPanel.hidden = false;
    if (!shownImages.length) strip.appendChild(el("span", null, "no explained images for this class"));
    shownImages.forEach(function (x) {
      var wrong = x.p !== label;
      var title = "#" + x.i + (wrong ? " predicted " + className(x.p) : "") +
        (x.y === 2 ? " (listed)" : x.y === 1 ? " (misclassified)" : "");
      strip.appendChild(imageButton(x.i, wrong, title, function () { showImage(label, x); }));
    });
  }
  function highlightConcept(cluster) {  // its neurons in the projection, its node in the graph
    views.projection.signal("graph_node", cluster).runAsync();
    views.detail.signal("graph_node", cluster).runAsync();
    views.graph.signal("neuron_cluster", cluster).runAsync();
    document.body.setAttribute("data-concept", String(cluster));
  }
  function showImage(label, x) {
    Array.prototype.forEach.call(strip.querySelectorAll("button.image"), function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-image") === String(x.i) ? "true" : "false");
    });
    card2.textContent = "";
    card2.hidden = false;
    var canvas = el("canvas");
    canvas.width = 128; canvas.height = 128;
    var left = el("div");
    left.appendChild(canvas);
    left.appendChild(el("div", null, "#" + x.i + ": predicted " + className(x.p) +
      (x.p !== label ? " (is " + className(label) + ")" : "")));
    card2.appendChild(left);
    var right = el("div");
    var atlasRow = -1;
    x.l.forEach(function (entry) {
      var row = rowInfo.get(entry[0]) || { short: "?", name: "?" };
      var line = el("div", "layer");
      var name = el("b", null, row.short);
      name.title = row.name;
      line.appendChild(name);
      var isAtlas = x.a && row.kind === "channel" && entry[0] === lastChannelRow();
      if (isAtlas) atlasRow = entry[0];
      entry[1].forEach(function (cluster, k) {
        var c = el("span", "concept");
        c.setAttribute("data-cluster", String(cluster));
        var info = clusterInfo.get(cluster);
        c.title = (info ? info.label : "cluster " + cluster) + " (cluster " + cluster + ")";
        if (isAtlas) { var sw = el("span", "swatch"); sw.style.background = SWATCHES[k % SWATCHES.length]; c.appendChild(sw); }
        var member = (byCluster.get(cluster) || [])[0];
        if (member !== undefined && patchCount(member)) {
          var img = el("img"); img.alt = "";
          atlases.thumb.url(member, 1).then(function (u) { img.src = u; }, function () {});
          c.appendChild(img);
        }
        var bar = el("span", "bar");
        bar.style.width = Math.max(1, Math.round(Math.abs(entry[2][k]) * 60)) + "px";
        c.appendChild(bar);
        c.appendChild(document.createTextNode(Math.round(entry[2][k] * 100) + "% " +
          (info ? info.short : "cluster " + cluster)));
        c.addEventListener("mouseenter", function () { highlightConcept(cluster); });
        c.addEventListener("click", function () { highlightConcept(cluster); });
        line.appendChild(c);
      });
      right.appendChild(line);
    });
    card2.appendChild(right);
    var ctx = canvas.getContext("2d");
    atlases.image.url(x.i, 1).then(function (url) {
      var img = new Image();
      img.onload = function () {
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
        if (x.a && atlasRow >= 0) {
          var h = x.a[0], w = x.a[1], cells = x.a[2];
          ctx.globalAlpha = 0.4;
          for (var i = 0; i < h; i++) for (var j = 0; j < w; j++) {
            var k = cells[i * w + j];
            if (k < 0) continue;
            ctx.fillStyle = SWATCHES[k % SWATCHES.length];
            ctx.fillRect(j * canvas.width / w, i * canvas.height / h, canvas.width / w, canvas.height / h);
          }
          ctx.globalAlpha = 1;
        }
        document.body.setAttribute("data-image", String(x.i));
      };
      img.src = url;
    }, function () {});
  }
  function lastChannelRow() {
    var r = -1;
    graphRows.forEach(function (row) { if (row.kind === "channel") r = row.row; });
    return r;
  }
  function showExemplars(cluster) {  // the images where a clicked node mattered most
    nodeImages.textContent = "";
    var list = (page.exemplars || {})[String(cluster)];
    if (!atlases.image || cluster < 0 || !list || !list.length) return;
    nodeImages.appendChild(el("div", null, "Where cluster " + cluster + " mattered most:"));
    var row = el("div", "strip");
    list.forEach(function (pair) {
      row.appendChild(imageButton(pair[0], false, "#" + pair[0] + " (" + className(pair[1]) + ")",
        function () {
          var open = function () {
            var x = shownImages.filter(function (y) { return y.i === pair[0]; })[0];
            if (x) showImage(pair[1], x);
          };
          if (String(pair[1]) === document.body.getAttribute("data-class")) open();
          else setClass(pair[1]).then(open);
        }));
    });
    nodeImages.appendChild(row);
  }

  // ---- word search: units and clusters whose words hold the text, and their classes ----------
  var wordBox = document.getElementById("word-box");
  var wordInput = document.getElementById("word-search");
  var wordResults = document.getElementById("word-results");
  var clusterWords = new Map();  // cluster -> [formula, caption], from the neuron records
  var SHOWN_MATCHES = 30;
  neurons.forEach(function (n) {
    if (n.cluster_words) clusterWords.set(n.cluster_id, [n.cluster_words, n.cluster_short]);
  });
  function holds(formula, q) { return !!formula && formula.toLowerCase().indexOf(q) >= 0; }
  function resultLine(title, items, render) {
    var line = el("div", "line");
    line.appendChild(el("b", null, items.length + " " + title + ":"));
    line.appendChild(document.createTextNode(" "));
    items.slice(0, SHOWN_MATCHES).forEach(function (x) { line.appendChild(render(x)); });
    if (items.length > SHOWN_MATCHES) line.appendChild(el("span", "more", "+" + (items.length - SHOWN_MATCHES) + " more"));
    wordResults.appendChild(line);
  }
  function searchWords(text) {
    var q = String(text).trim().toLowerCase();
    var found = [], clusters = [], classSet = new Set();
    if (q) {
      neurons.forEach(function (n) { if (holds(n.words, q)) found.push(n.neuron_id); });
      clusterWords.forEach(function (w, c) { if (holds(w[0], q)) clusters.push(c); });
      clusters.sort(function (a, b) { return a - b; });
      clusters.forEach(function (c) {
        decodeIds((page.cluster_classes || {})[String(c)]).forEach(function (l) { classSet.add(l); });
      });
    }
    var labels = Array.from(classSet).sort(function (a, b) { return a - b; });
    views.projection.signal("word_units", barList(found));
    views.graph.signal("word_clusters", barList(clusters));
    wordResults.textContent = "";
    wordResults.hidden = !q;
    if (q) {
      resultLine("units", found, function (id) {
        var n = byNeuron.get(id), s = el("span", "unit", "#" + id + " " + n.unit + " (" + n.words + ")");
        s.setAttribute("data-neuron", String(id));
        s.addEventListener("mouseenter", function () { showScorecard(id); });
        return s;
      });
      resultLine("clusters", clusters, function (c) {
        var s = el("span", "cluster", "cluster " + c + ": " + clusterWords.get(c)[1]);
        s.setAttribute("data-cluster", String(c));
        s.addEventListener("click", function () { highlightConcept(c); });
        return s;
      });
      resultLine("classes using them", labels, function (l) {
        var b = el("button", "class", className(l));
        b.type = "button";
        b.setAttribute("data-class", String(l));
        b.addEventListener("click", function () { setClass(l); });
        return b;
      });
    }
    document.body.setAttribute("data-words", q);
    window.cartoWords = { query: q, units: found, clusters: clusters, classes: labels };
    return Promise.all([views.projection.runAsync(), views.graph.runAsync()]);
  }
  window.cartoSearchWords = searchWords;
  function offerWords() {  // once the views exist, and only in studies with words
    if (!page.words) return;
    wordBox.hidden = false;
    wordInput.addEventListener("input", function () { searchWords(wordInput.value); });
  }

  function link() {
    var p = views.projection, g = views.graph, d = views.detail;
    d.data("neurons", neurons);
    g.addSignalListener("node_pick", function (name, value) {
      var id = value && value.cluster_id ? value.cluster_id[0] : -2;
      p.signal("graph_node", id).runAsync();
      d.signal("graph_node", id).runAsync();
      showExemplars(id);
    });
    p.addSignalListener("pick", function (name, value) {
      var picked = value && value.neuron_id;
      selectedUnit = picked ? value.neuron_id[0] : -1;
      showScorecard(selectedUnit);
      g.signal("neuron_cluster", picked ? value.cluster_id[0] : -2).runAsync();
      d.signal("picked_neuron", picked ? value.neuron_id[0] : -1)
        .signal("picked_cluster", picked ? value.cluster_id[0] : -2)
        .signal("picked_neighbors", picked ? String(value.neighbors[0]) : "|")
        .runAsync();
    });
  }

  var options = { renderer: "canvas", actions: false, loader: loader, tooltip: tooltip };
  window.cartoStart = performance.now();
  Promise.all([
    vegaEmbed("#projection", specs.projection, options),
    vegaEmbed("#detail", specs.detail, options),
    vegaEmbed("#graph", specs.graph, options)
  ]).then(function (results) {
    views.projection = results[0].view;
    views.detail = results[1].view;
    views.graph = results[2].view;
    window.cartoViews = views;
    link();
    offerUnits();
    offerWords();
    var first = classes.filter(function (c) { return c.graph; })[0] || classes[0];
    return first ? setClass(first.label) : null;
  }).then(function () {
    window.cartoReady = performance.now();
    document.body.setAttribute("data-ready", "1");
  }).catch(function (error) {
    console.error(error);
  });
})();
