// clipper_core dashboard: polls /dashboard/data every second and redraws.
// Hand-written canvas charts; no dependencies, no build step.
//
// For tests and scripts, every chart is a <figure class="chart"> whose
// data-app / data-chart attributes name it and whose data-latest attribute holds
// the newest value in the chart's unit (req/s, ms, %, inputs); <body
// data-updates> counts the successful polls.
(function () {
  "use strict";

  var POLL_MS = 1000;
  var params = new URLSearchParams(window.location.search);
  var token = params.get("token");
  var fetchHeaders = token ? { Authorization: "Bearer " + token } : {};
  var updates = 0;

  var COLORS = {
    blue: "#2563eb", green: "#16a34a", orange: "#ea580c", purple: "#7c3aed",
    red: "#dc2626", grey: "#9ca3af", teal: "#0d9488",
  };

  // Each chart: what it draws from an app's series, and how values read.
  var CHARTS = [
    {
      id: "throughput", title: "Throughput", unit: "req/s", min: 0,
      lines: [
        { name: "requests", color: COLORS.blue, src: "app", key: "throughput" },
        { name: "within SLO", color: COLORS.green, src: "app", key: "goodput" },
      ],
    },
    {
      id: "latency", title: "p99 latency vs SLO", unit: "ms", min: 0, slo: true,
      lines: [
        // p99 first: it is what the SLO line is for, and the chart's readout.
        { name: "p99", color: COLORS.orange, src: "app", key: "p99_seconds", scale: 1000 },
        { name: "p50", color: COLORS.teal, src: "app", key: "p50_seconds", scale: 1000 },
      ],
    },
    {
      id: "attainment", title: "SLO attainment", unit: "%", min: 0, max: 100,
      lines: [
        { name: "within SLO", color: COLORS.green, src: "app", key: "slo_attainment", scale: 100 },
      ],
    },
    {
      id: "batch_size", title: "Batch size", unit: "inputs", min: 0,
      lines: [
        { name: "mean", color: COLORS.purple, src: "model", key: "mean_batch_size" },
        // The controller's limit is often far above the batches taken: it does
        // not stretch the axis, and shows in its legend entry.
        { name: "limit", color: COLORS.grey, src: "model", key: "batch_size_limit", dash: [4, 3],
          noScale: true, legendValue: true },
      ],
    },
    {
      id: "cache_hit_ratio", title: "Cache hit ratio", unit: "%", min: 0, max: 100,
      lines: [
        { name: "hits", color: COLORS.blue, src: "model", key: "cache_hit_ratio", scale: 100 },
      ],
    },
  ];

  function h(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "text") node.textContent = attrs[k];
        else if (k === "className") node.className = attrs[k];
        else node.setAttribute(k, attrs[k]);
      });
    }
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  function num(v, digits) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    var d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
    return Number(v).toFixed(d);
  }

  function lastValue(values) {
    for (var i = values.length - 1; i >= 0; i--) {
      if (values[i] !== null && values[i] !== undefined) return values[i];
    }
    return null;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 4, 6, 8, 10];  // four grid steps each: round labels
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
    return 10 * p;
  }

  // Draw lines (arrays of numbers or nulls, aligned with times) on a canvas.
  function drawChart(canvas, times, lines, opts) {
    var dpr = window.devicePixelRatio || 1;
    var w = canvas.clientWidth || 300;
    var hgt = canvas.clientHeight || 130;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(hgt * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(hgt * dpr);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    var left = 40, right = 8, top = 6, bottom = 18;
    var pw = w - left - right, ph = hgt - top - bottom;

    var ymax = opts.max;
    if (ymax === undefined) {
      var m = 0;
      lines.forEach(function (l) {
        if (l.noScale) return;
        l.values.forEach(function (v) { if (v !== null && v > m) m = v; });
      });
      if (opts.ref !== undefined && opts.ref !== null) m = Math.max(m, opts.ref * 1.15);
      ymax = niceMax(m * 1.05);
    }
    var ymin = opts.min || 0;
    var now = times.length ? times[times.length - 1] : Date.now() / 1000;
    // Up to two minutes; less while the server is younger than that.
    var span = times.length ? Math.min(120, Math.max(30, now - times[0])) : 120;
    function x(t) { return left + pw * (1 - (now - t) / span); }
    function y(v) { return top + ph * (1 - (v - ymin) / (ymax - ymin || 1)); }

    // grid and y labels
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#6b7385";
    ctx.strokeStyle = "#eceef2";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (var g = 0; g <= 4; g++) {
      var gv = ymin + (ymax - ymin) * g / 4;
      var gy = Math.round(y(gv)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, gy); ctx.lineTo(left + pw, gy); ctx.stroke();
      ctx.fillText(num(gv, gv % 1 === 0 ? 0 : (gv * 10) % 1 === 0 ? 1 : 2), left - 4, gy);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(span >= 120 ? "-2 min" : "-" + Math.round(span) + " s", left, top + ph + 4);
    ctx.textAlign = "right";
    ctx.fillText("now", left + pw, top + ph + 4);

    // reference line (the SLO)
    if (opts.ref !== undefined && opts.ref !== null) {
      var ry = y(opts.ref);
      ctx.save();
      ctx.strokeStyle = COLORS.red;
      ctx.setLineDash([6, 4]);
      ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(left, ry); ctx.lineTo(left + pw, ry); ctx.stroke();
      ctx.restore();
      ctx.fillStyle = COLORS.red;
      ctx.textAlign = "left";
      ctx.textBaseline = "bottom";
      ctx.fillText("SLO " + num(opts.ref) + " " + opts.unit, left + 4, ry - 2);
    }

    // series
    lines.forEach(function (l) {
      ctx.save();
      ctx.strokeStyle = l.color;
      ctx.lineWidth = 1.8;
      if (l.dash) ctx.setLineDash(l.dash);
      ctx.beginPath();
      var pen = false;
      for (var i = 0; i < times.length; i++) {
        var v = l.values[i];
        if (v === null || v === undefined || now - times[i] > span || v > ymax) {
          pen = false;
          continue;
        }
        var px = x(times[i]), py = y(Math.min(Math.max(v, ymin), ymax));
        if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
        pen = true;
      }
      ctx.stroke();
      ctx.restore();
    });
  }

  function buildAppCard(app) {
    var card = h("section", { className: "app", "data-app": app.name });
    var head = h("div", { className: "app-head" }, [
      h("h3", { className: "app-name", text: app.name }),
      h("span", { className: "meta" }),
    ]);
    card.appendChild(head);
    card.appendChild(h("div", { className: "totals" }));
    var grid = h("div", { className: "charts" });
    CHARTS.forEach(function (spec) {
      var legend = h("div", { className: "legend" });
      spec.lines.forEach(function (l) {
        var sw = h("i");
        sw.style.background = l.color;
        legend.appendChild(h("span", { "data-line": l.key }, [
          sw, h("span", { className: "name", text: l.name }),
        ]));
      });
      grid.appendChild(h("figure", {
        className: "chart", "data-app": app.name, "data-chart": spec.id, "data-latest": "",
      }, [
        h("figcaption", null, [
          h("span", { text: spec.title }),
          h("span", { className: "latest", text: "–" }),
        ]),
        h("canvas"),
        legend,
      ]));
    });
    card.appendChild(grid);
    return card;
  }

  function seriesFor(data, app, line) {
    var n = data.series.t.length;
    var src = line.src === "app"
      ? data.series.apps[app.name]
      : (app.model_key ? data.series.models[app.model_key] : null);
    var raw = src && src[line.key] ? src[line.key] : new Array(n).fill(null);
    var scale = line.scale || 1;
    return raw.map(function (v) { return v === null || v === undefined ? null : v * scale; });
  }

  function renderApps(data) {
    var box = document.getElementById("apps");
    var seen = {};
    if (!data.apps.length) {
      box.innerHTML = '<p class="empty">No applications yet.</p>';
      return;
    }
    var empty = box.querySelector(".empty");
    if (empty) empty.remove();
    data.apps.forEach(function (app) {
      seen[app.name] = true;
      var card = box.querySelector('section.app[data-app="' + CSS.escape(app.name) + '"]');
      if (!card) { card = buildAppCard(app); box.appendChild(card); }
      var sloMs = app.slo_seconds * 1000;
      card.querySelector(".meta").textContent =
        app.input_type + " · SLO " + num(sloMs) + " ms · " +
        (app.model_key ? "model " + app.model_key : "no model linked");
      var w = app.window || {};
      var defaults = 0, errors = 0;
      Object.keys(app.default_outputs || {}).forEach(function (k) { defaults += app.default_outputs[k]; });
      Object.keys(app.errors || {}).forEach(function (k) { errors += app.errors[k]; });
      var totals = card.querySelector(".totals");
      totals.innerHTML = "";
      [
        ["requests", app.requests],
        ["within SLO", app.answers_within_slo],
        ["default outputs", defaults],
        ["errors", errors],
        ["throughput (" + num(data.server.window_seconds, 0) + " s)", num(w.throughput) + " req/s"],
        ["goodput", num(w.goodput) + " /s"],
        ["p99", num(w.p99_seconds === null || w.p99_seconds === undefined ? null : w.p99_seconds * 1000) + " ms"],
        ["attainment", w.slo_attainment === null || w.slo_attainment === undefined ? "–" : num(w.slo_attainment * 100, 1) + " %"],
      ].forEach(function (kv) {
        totals.appendChild(h("span", { "data-total": kv[0] }, [
          document.createTextNode(kv[0] + " "), h("b", { text: String(kv[1]) }),
        ]));
      });
      CHARTS.forEach(function (spec) {
        var fig = card.querySelector('figure[data-chart="' + spec.id + '"]');
        var lines = spec.lines.map(function (l) {
          return { color: l.color, dash: l.dash, noScale: l.noScale, values: seriesFor(data, app, l) };
        });
        spec.lines.forEach(function (l, i) {
          if (!l.legendValue) return;
          var v = lastValue(lines[i].values);
          fig.querySelector('[data-line="' + l.key + '"] .name').textContent =
            l.name + (v === null ? "" : " " + num(v, 0));
        });
        var latest = lastValue(lines[0].values);
        fig.setAttribute("data-latest", latest === null ? "" : String(latest));
        fig.querySelector(".latest").textContent =
          latest === null ? "–" : num(latest) + " " + spec.unit;
        drawChart(fig.querySelector("canvas"), data.series.t, lines, {
          min: spec.min, max: spec.max, unit: spec.unit, ref: spec.slo ? sloMs : null,
        });
      });
    });
    box.querySelectorAll("section.app").forEach(function (card) {
      if (!seen[card.getAttribute("data-app")]) card.remove();
    });
  }

  function pill(text, kind) { return '<span class="pill ' + kind + '">' + esc(text) + "</span>"; }

  function esc(s) {
    return String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function renderModels(data) {
    var box = document.getElementById("models");
    if (!data.models.length) {
      box.innerHTML = '<p class="empty">No models yet.</p>';
      return;
    }
    var rows = [
      "<table><thead><tr><th>model version</th><th>replicas</th><th>queue</th>",
      "<th>batch limit</th><th>mean batch</th><th>model ms</th><th>requests</th>",
      "<th>cache hits</th><th>errors</th></tr></thead><tbody>",
    ];
    data.models.forEach(function (m) {
      var w = m.window || {};
      var errors = 0;
      Object.keys(m.errors || {}).forEach(function (k) { errors += m.errors[k]; });
      // Of all its replicas: connected, or started here and not (yet) connected.
      var listed = m.replica_list || [];
      var total = Math.max(listed.length, m.replicas);
      var failed = listed.filter(function (r) { return r.state === "failed"; }).length;
      var health = m.replicas_healthy === total && total > 0 ? "ok"
        : m.replicas_healthy > 0 ? "warn" : "bad";
      rows.push(
        '<tr class="model" data-model="' + esc(m.key) + '"><td><b>' + esc(m.model) + "</b> v" +
        esc(m.version) + " " + (m.current ? pill("current", "ok") : pill("inactive", "idle")) +
        "</td><td>" + pill(m.replicas_healthy + "/" + total + " healthy" +
          (failed ? ", " + failed + " failed" : ""), health) +
        '</td><td class="num">' + esc(m.queue_length) + " / " + esc(m.queue_capacity) +
        '</td><td class="num">' + esc(m.batch_size_limit) + " (max " + esc(m.max_batch_size) + ")" +
        '</td><td class="num">' + num(w.mean_batch_size) +
        '</td><td class="num">' + num(m.container_latency_mean_seconds === null ? null : m.container_latency_mean_seconds * 1000) +
        '</td><td class="num">' + esc(m.requests) +
        '</td><td class="num">' + (m.cache_enabled ? esc(m.cache_hits) : "off") +
        '</td><td class="num">' + esc(errors) + "</td></tr>"
      );
      (m.replica_list || []).forEach(function (r) {
        var kind = r.healthy ? "ok" : r.state === "running" ? "warn" : "bad";
        rows.push(
          '<tr class="replica"><td>replica ' + esc(r.replica_id) + " " +
          pill(r.healthy ? "healthy" : r.state, kind) + "</td><td>pid " + esc(r.pid) +
          "</td><td>" + esc(r.address || "") + '</td><td class="num">restarts ' + esc(r.restarts) +
          '</td><td class="num">batches ' + esc(r.batches) + "</td><td>" +
          (r.busy ? "busy" : "idle") + "</td><td></td><td></td><td></td></tr>"
        );
      });
    });
    rows.push("</tbody></table>");
    box.innerHTML = rows.join("");
  }

  function renderPipelines(data) {
    var box = document.getElementById("pipelines");
    var pipes = data.pipelines || [];
    if (!pipes.length) {
      box.innerHTML = '<p class="empty">No pipelines yet.</p>';
      return;
    }
    var rows = [
      "<table><thead><tr><th>pipeline / stage</th><th>model</th><th>requests</th>",
      "<th>answered</th><th>mean ms</th><th>deadline misses</th><th>errors</th>",
      "<th>skipped</th></tr></thead><tbody>",
    ];
    pipes.forEach(function (p) {
      var w = p.window || {};
      rows.push(
        '<tr class="pipeline" data-pipeline="' + esc(p.name) + '"><td><b>' + esc(p.name) +
        "</b> " + esc(p.input_type) + " · SLO " + num(p.slo_seconds * 1000, 0) + " ms" +
        '</td><td></td><td class="num">' + esc(p.requests) +
        '</td><td class="num">' + esc(p.answers_within_slo) + " in SLO" +
        '</td><td class="num">p99 ' + num(w.p99_seconds === null || w.p99_seconds === undefined
          ? null : w.p99_seconds * 1000) +
        '</td><td class="num">' + esc((p.default_outputs || {}).slo || 0) +
        "</td><td></td><td></td></tr>"
      );
      p.stages.forEach(function (st) {
        rows.push(
          '<tr class="replica"><td>' + esc(st.name) + (st.name === p.entry ? " (entry)" : "") +
          "</td><td>" + esc(st.model ? st.model + (st.version ? ":" + st.version : "")
            : "join (" + st.combine + ")") +
          '</td><td class="num">' + esc(st.requests) + '</td><td class="num">' + esc(st.answered) +
          '</td><td class="num">' + num(st.latency_mean_seconds === null ? null
            : st.latency_mean_seconds * 1000) +
          '</td><td class="num">' + esc(st.deadline_misses) +
          '</td><td class="num">' + esc(st.errors) + '</td><td class="num">' + esc(st.skipped) +
          "</td></tr>"
        );
      });
      p.edges.forEach(function (e) {
        rows.push(
          '<tr class="replica"><td>' + esc(e.from + " → " + e.to) + "</td><td>" +
          esc(e.when || "always") + '</td><td class="num">' + esc(e.evaluated) +
          '</td><td class="num">taken ' + esc(e.taken) + '</td><td class="num">' +
          (e.taken_fraction === null ? "–" : num(100 * e.taken_fraction, 1) + " %") +
          "</td><td></td><td></td><td></td></tr>"
        );
      });
    });
    rows.push("</tbody></table>");
    box.innerHTML = rows.join("");
  }

  function renderCache(data) {
    var box = document.getElementById("cache");
    var c = data.cache;
    if (!c) { box.innerHTML = '<span class="empty">disabled</span>'; return; }
    var total = c.hits + c.misses;
    var parts = [
      ["hits", c.hits], ["misses", c.misses],
      ["hit ratio", total ? num(100 * c.hits / total, 1) + " %" : "–"],
      ["evictions", c.evictions], ["entries", c.entries],
      ["memory", num(c.bytes / 1048576, 1) + " / " + num(c.capacity_bytes / 1048576, 0) + " MiB"],
    ];
    box.innerHTML = parts.map(function (p) {
      return "<span>" + esc(p[0]) + " <b>" + esc(p[1]) + "</b></span>";
    }).join("");
  }

  function render(data) {
    var s = data.server;
    document.getElementById("server-meta").textContent =
      "query " + s.query_url + " · management " + s.management_url + " · pid " + s.pid +
      " · up " + Math.round(s.uptime_seconds) + " s";
    renderApps(data);
    renderPipelines(data);
    renderModels(data);
    renderCache(data);
  }

  function setStatus(state, text) {
    var st = document.getElementById("status");
    st.setAttribute("data-state", state);
    st.textContent = text;
  }

  function poll() {
    var url = "/dashboard/data";
    fetch(url, { headers: fetchHeaders, cache: "no-store" })
      .then(function (resp) {
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        return resp.json();
      })
      .then(function (data) {
        render(data);
        updates += 1;
        document.body.setAttribute("data-updates", String(updates));
        setStatus("ok", "live · updated " + new Date().toLocaleTimeString());
      })
      .catch(function (err) { setStatus("error", "no data: " + err.message); })
      .then(function () { window.setTimeout(poll, POLL_MS); });
  }

  poll();
})();
