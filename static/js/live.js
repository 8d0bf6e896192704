/* Tuneboard live pages: ONE EventSource per page feeds the DOM and the uPlot charts.
 *
 * Jobs list:   /api/stream            `jobs`    [JobSummary]                → table rows
 * Job detail:  /api/jobs/{id}/stream  `job`     JobSummary                  → header, stats, buttons
 *                                      `metrics` {"series": {key: [[step, v]]}} → charts
 *                                      `events`  [{seq, step, kind, payload}]  → markers, events table, samples
 *                                      `end`     the job finished; stop listening
 * The detail page first loads the downsampled history (GET /api/jobs/{id}/metrics), then opens the
 * stream at that point (cursor "<last_seq>.<last_step>"). A point whose step is not after the last one
 * held for its key replaces the series from that step on (a resume re-sends the boundary step; a guard
 * rollback restarts at an earlier step).
 * The charts share one x zoom (drag, setScale, "Reset zoom" or a double-click; static/js/charts.js); a
 * zoomed range is read again at full resolution (GET /api/jobs/{id}/metrics?from_step=&to_step=).
 * Everything here is an enhancement: the server-rendered page is complete without it.
 */
(function () {
  "use strict";

  // numbers and durations: static/js/format.js (the same rules as the server's filters, app/templating.py);
  // statuses and chart panels: the vocabulary the server rendered into the page
  if (!window.TuneboardFormat) {
    console.warn("tuneboard: format.js did not load; the page stays as the server rendered it");
    return;
  }
  const { fmtNum, fmtDuration, vocabulary } = window.TuneboardFormat;
  const STATUS = vocabulary.statuses;

  const timeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });

  function localTime(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : timeFormat.format(d);
  }

  /** Replace the UTC fallback text of every <time data-local-time> under root with local time. */
  function localizeTimes(root) {
    (root || document).querySelectorAll("time[data-local-time]").forEach((el) => {
      const iso = el.getAttribute("datetime");
      if (!iso || el.dataset.localized === iso) return;
      el.title = el.textContent;
      el.textContent = localTime(iso);
      el.dataset.localized = iso;
    });
  }

  function timeElement(iso) {
    if (!iso) return document.createTextNode("—");
    const t = document.createElement("time");
    t.setAttribute("datetime", iso);
    t.dataset.localTime = "";
    t.textContent = iso;
    return t;
  }

  // ------------------------------------------------------------------ a summary → elements with data-field
  function applySummary(root, s) {
    if (root.dataset && "status" in root.dataset) root.dataset.status = s.status;
    root.querySelectorAll("[data-field]").forEach((el) => {
      const field = el.dataset.field;
      const fmt = el.dataset.format;
      if (field === "status") {
        el.className = STATUS.badgeClass(s.status);
        el.textContent = s.status;
      } else if (field === "progress") {
        const pct = Math.round((s.progress || 0) * 1000) / 10;
        el.setAttribute("aria-valuenow", String(pct));
        const fill = el.querySelector(".progress-fill");
        if (fill) fill.style.width = pct + "%";
      } else if (field === "steps") {
        el.textContent = s.total_steps ? s.last_step + " / " + s.total_steps : (s.last_step ? String(s.last_step) : "—");
      } else if (field === "group_id") {
        // a sweep member links to its group's live compare
        el.hidden = !s.group_id;
        if (s.group_id) {
          el.href = "/groups/" + encodeURIComponent(s.group_id);
          el.textContent = s.group_id;
        }
      } else if (field === "select") {
        // the compare checkbox of a row cloned from the template
        el.value = String(s.id);
        el.setAttribute("aria-label", "Select #" + s.id + " to compare");
      } else if (field === "link") {
        el.href = "/jobs/" + s.id;
        el.textContent = "#" + s.id;
      } else if (field === "name") {
        el.href = "/jobs/" + s.id;
        el.textContent = s.name || "(unnamed)";
      } else if (field === "eta_seconds") {
        el.textContent = STATUS.progressing.has(s.status) ? fmtDuration(s.eta_seconds) : "—";
      } else if (fmt === "time") {
        const iso = s[field];
        const current = el.querySelector("time");
        if ((current ? current.getAttribute("datetime") : null) !== (iso || null)) {
          el.replaceChildren(timeElement(iso));
          localizeTimes(el);
        }
      } else if (fmt === "num") {
        el.textContent = fmtNum(s[field]);
      } else if (fmt === "gb") {
        el.textContent = s[field] === null || s[field] === undefined ? "—" : fmtNum(s[field], 3) + " GB";
      } else if (fmt === "gpus") {
        const g = s.assigned_gpus;
        el.textContent = g ? "GPU " + g : (g === "" ? "CPU" : "—");
      } else if (field in s) {
        el.textContent = s[field] === null || s[field] === undefined ? "" : String(s[field]);
        if (el.classList.contains("reason")) el.title = el.textContent;
      }
    });
  }

  function openStream(url, handlers) {
    const es = new EventSource(url);
    Object.entries(handlers).forEach(([name, fn]) => {
      es.addEventListener(name, (e) => {
        let data = null;
        try {
          data = e.data ? JSON.parse(e.data) : null;
        } catch (err) {
          console.warn("tuneboard: unreadable " + name + " message", err);
          return;
        }
        fn(data, e);
      });
    });
    return es;
  }

  // ------------------------------------------------------------------ jobs list
  function initJobsList(main) {
    const body = document.getElementById("jobs-body");
    const template = document.getElementById("job-row-template");
    const wrap = document.getElementById("jobs-table-wrap");
    const empty = document.getElementById("empty-state");

    function upsertRow(s) {
      let row = document.getElementById("job-row-" + s.id);
      if (!row) {
        row = template.content.firstElementChild.cloneNode(true);
        row.id = "job-row-" + s.id;
        row.dataset.jobId = String(s.id);
        // newest first: before the first row with a smaller id
        const next = Array.from(body.rows).find((r) => Number(r.dataset.jobId) < s.id);
        body.insertBefore(row, next || null);
      }
      applySummary(row, s);
      const model = row.querySelector('[data-field="model_name"]');
      if (model) model.textContent = s.model_name;
      wrap.hidden = false;
      empty.hidden = true;
    }

    openStream(main.dataset.stream, {
      jobs: (list) => (list || []).forEach(upsertRow),
    });
  }

  // ------------------------------------------------------------------ job detail: series store
  const TERMINAL = STATUS.terminal;

  function cssVar(name, fallback) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  /** key → {xs: [step], ys: [value]} in step order. */
  function makeStore() {
    const series = new Map();
    return {
      series,
      /** Merge [[step, v], ...] for one key; a step at or before the last held one replaces from there. */
      merge(key, points) {
        let s = series.get(key);
        if (!s) {
          s = { xs: [], ys: [] };
          series.set(key, s);
        }
        for (const [step, raw] of points) {
          const v = typeof raw === "number" ? raw : null; // non-finite values arrive as null: a gap
          const n = s.xs.length;
          if (n === 0 || step > s.xs[n - 1]) {
            s.xs.push(step);
            s.ys.push(v);
          } else {
            let i = n;
            while (i > 0 && s.xs[i - 1] >= step) i--;
            s.xs.length = i;
            s.ys.length = i;
            s.xs.push(step);
            s.ys.push(v);
          }
        }
      },
      lastStep() {
        let max = null;
        series.forEach((s) => {
          if (s.xs.length && (max === null || s.xs[s.xs.length - 1] > max)) max = s.xs[s.xs.length - 1];
        });
        return max;
      },
    };
  }

  /** uPlot's aligned data for a list of {xs, ys}: the union of their steps. A series with no point at a step
   * holds undefined there (the line joins across), a non-finite point (null) stays a gap in its line. */
  function alignedData(lists) {
    const stepSet = new Set();
    lists.forEach((s) => s.xs.forEach((x) => stepSet.add(x)));
    const xs = Array.from(stepSet).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const data = [xs];
    lists.forEach((s) => {
      const ys = new Array(xs.length).fill(undefined);
      for (let i = 0; i < s.xs.length; i++) ys[index.get(s.xs[i])] = s.ys[i];
      data.push(ys);
    });
    return data;
  }

  // ------------------------------------------------------------------ job detail: charts
  /** The job page's charts from the server's metric table (contract/metrics.py): one per panel. */
  const CHARTS = vocabulary.panels.map((panel) => ({
    id: panel.id,
    logToggle: panel.log_toggle,
    zeroBased: panel.zero_based,
    series: vocabulary.metrics
      .filter((m) => m.panel === panel.id)
      .map((m) => ({ key: m.key, label: m.label, color: "--c" + m.colour, points: m.points, scale: m.scale === "y" ? undefined : m.scale })),
  }));
  const MARKER_COLORS = { checkpoint: "--mk-checkpoint", guard: "--mk-guard", preflight: "--mk-preflight" };
  const LEGEND_HEIGHT = 28;

  function initJobDetail(main) {
    const jobId = main.dataset.jobId;
    const store = makeStore();
    const charts = new Map(); // chart id → {spec, el, plot, keys, log}
    const markersEl = document.getElementById("markers-data");
    const markers = markersEl ? JSON.parse(markersEl.textContent || "[]") : [];
    let totalSteps = null;
    let lastSeq = Number(main.dataset.lastSeq || 0); // highest event seq the page shows
    let drawQueued = false;
    let status = main.dataset.status;

    window.tuneboard = { store, charts, markers };

    function markersPlugin() {
      return {
        hooks: {
          draw: [(u) => {
            if (!markers.length) return;
            const { left, top, width, height } = u.bbox;
            const ctx = u.ctx;
            ctx.save();
            ctx.lineWidth = Math.max(1, devicePixelRatio);
            ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
            for (const m of markers) {
              const x = Math.round(u.valToPos(m.step, "x", true));
              if (!Number.isFinite(x) || x < left - 1 || x > left + width + 1) continue;
              ctx.strokeStyle = cssVar(MARKER_COLORS[m.kind] || "--muted", "#888");
              ctx.beginPath();
              ctx.moveTo(x, top);
              ctx.lineTo(x, top + height);
              ctx.stroke();
            }
            ctx.restore();
          }],
        },
      };
    }

    function xRange(u, min, max) {
      // from step 0 (preflight markers live there) to the planned last step, so the chart shows progress
      let lo = Math.min(0, min === null ? 0 : min);
      let hi = Math.max(max === null ? 1 : max, totalSteps || 0, 1);
      markers.forEach((m) => { lo = Math.min(lo, m.step); });
      return [lo, hi];
    }

    // chart habits (static/js/charts.js): one zoom for every chart, smoothing, log scale, CSV/PNG
    const CH = window.TuneboardCharts;
    const resetButton = document.getElementById("chart-reset-zoom");
    const chartsBox = document.getElementById("charts");
    let smoothing = 0;
    let zoomData = null; // {lo, hi, series: Map key → {xs, ys}}: a zoomed range read at full resolution
    let zoomTicket = 0;
    let zoomTimer = null;
    const zoom = CH.zoomGroup(xRange, (z) => {
      if (resetButton) resetButton.hidden = !z;
      if (chartsBox) chartsBox.dataset.zoom = z ? Math.round(z.min) + "-" + Math.round(z.max) : "";
      if (!z) {
        zoomTicket++;
        zoomData = null;
      } else {
        clearTimeout(zoomTimer);
        zoomTimer = setTimeout(fetchZoom, 120);
      }
      scheduleDraw();
    });
    window.tuneboard.zoom = zoom;
    if (resetButton) resetButton.addEventListener("click", () => zoom.reset());

    /** A key's points as drawn: the history and live points, and inside a zoomed range the full-resolution read. */
    function seriesFor(key) {
      const s = store.series.get(key);
      const z = zoomData && zoomData.series.get(key);
      if (!z) return s;
      const zLast = z.xs.length ? z.xs[z.xs.length - 1] : zoomData.lo - 1;
      const out = { xs: [], ys: [] };
      for (let i = 0; i < s.xs.length && s.xs[i] < zoomData.lo; i++) {
        out.xs.push(s.xs[i]);
        out.ys.push(s.ys[i]);
      }
      out.xs.push(...z.xs);
      out.ys.push(...z.ys);
      for (let i = 0; i < s.xs.length; i++) {
        if (s.xs[i] > zLast && s.xs[i] >= zoomData.lo) {
          out.xs.push(s.xs[i]);
          out.ys.push(s.ys[i]);
        }
      }
      return out;
    }

    async function fetchZoom() {
      const z = zoom.zoom;
      if (!z) return;
      const lo = Math.max(0, Math.floor(z.min));
      const hi = Math.max(lo, Math.ceil(z.max));
      if (zoomData && zoomData.lo === lo && zoomData.hi === hi) return;
      const keys = new Set();
      charts.forEach((c) => activeKeys(c.spec).forEach((k) => keys.add(k)));
      if (!keys.size) return;
      const ticket = ++zoomTicket;
      const q = "from_step=" + lo + "&to_step=" + hi + "&max_points=2000&keys=" + encodeURIComponent(Array.from(keys).join(","));
      try {
        const r = await fetch("/api/jobs/" + jobId + "/metrics?" + q);
        if (!r.ok) return;
        const msg = await r.json();
        if (ticket !== zoomTicket) return; // zoomed elsewhere (or reset) meanwhile
        const series = new Map();
        Object.entries(msg.series || {}).forEach(([key, points]) => {
          series.set(key, {
            xs: points.map((p) => p[0]),
            ys: points.map((p) => (typeof p[1] === "number" ? p[1] : null)),
          });
        });
        zoomData = { lo, hi, series };
        if (chartsBox) chartsBox.dataset.zoomLoaded = lo + "-" + hi;
        scheduleDraw();
      } catch (err) {
        console.warn("tuneboard: could not load the zoomed range", err);
      }
    }

    /** The plot's series: per key its line, or with smoothing the faint raw line and the smoothed one. */
    function plotLists(keys) {
      const out = [];
      keys.forEach((k) => {
        const s = seriesFor(k);
        out.push(s);
        if (smoothing) out.push({ xs: s.xs, ys: CH.ema(s.ys, smoothing) });
      });
      return out;
    }

    function logOptions(c, keys) {
      if (!c.log) return null;
      return CH.logScale(keys.filter((k) => {
        const spec = c.spec.series.find((s) => s.key === k);
        return !spec.scale;
      }).map((k) => seriesFor(k).ys));
    }

    function buildPlot(c, keys) {
      const axis = cssVar("--chart-axis", "#666");
      const grid = cssVar("--chart-grid", "rgba(0,0,0,.07)");
      const specs = keys.map((k) => c.spec.series.find((s) => s.key === k));
      const usesPct = specs.some((s) => s.scale === "pct");
      const width = Math.max(200, c.el.clientWidth);
      const height = Math.max(120, c.el.clientHeight - (c.legendHeight || LEGEND_HEIGHT));
      const fmt = (v) => (v === null ? "NaN/inf" : v === undefined ? "—" : fmtNum(v));
      const logY = logOptions(c, keys);
      const series = [{ label: "step", value: (u, v) => (v === null || v === undefined ? "—" : String(v)) }];
      specs.forEach((s) => {
        const line = {
          label: s.label,
          scale: s.scale || "y",
          stroke: cssVar(s.color, "#36c"),
          width: 1.5,
          spanGaps: false, // holes between points join (undefined); a NaN/inf point (null) shows as a gap
          points: { show: s.points ? true : undefined, size: 5 },
          // no cursor on the chart (idx null): "—"; a point the server sent as NaN/inf (null at an index): "NaN/inf"
          value: (u, v, si, idx) => (idx === null || idx === undefined ? "—" : fmt(v)),
        };
        if (!smoothing) {
          series.push(line);
          return;
        }
        // the raw line stays faint behind; the legend shows "smoothed (raw)" on the smoothed entry
        series.push(Object.assign({}, line, { label: s.label + " raw", alpha: 0.28, width: 1, points: { show: false } }));
        series.push(Object.assign({}, line, {
          value: (u, v, si, idx) => (idx === null || idx === undefined ? "—" : fmt(v) + " (raw " + fmt(u.data[si - 1][idx]) + ")"),
        }));
      });
      const opts = {
        width,
        height,
        cursor: zoom.cursor(),
        scales: {
          x: { time: false, range: zoom.range },
          // memory and throughput start at zero: a 4 MB wobble must not look like a leak
          y: logY || (c.spec.zeroBased ? { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } : { range: CH.yRange }),
          pct: { range: [0, 100] },
        },
        axes: [
          // the x axis is named (the y units are in each chart's caption)
          { stroke: axis, grid: { stroke: grid }, ticks: { stroke: grid }, label: "step", labelSize: 18 },
          { stroke: axis, grid: { stroke: grid }, ticks: { stroke: grid },
            // wide enough for the longest tick label ("2.00e-4" on a zoomed learning rate)
            size: (u, vals) => Math.max(56, 18 + 7 * Math.max(0, ...(vals || []).map((v) => String(v).length))),
            values: (u, vals) => vals.map((v) => fmtNum(v, 3)) },
        ].concat(usesPct ? [{ scale: "pct", side: 1, stroke: axis, grid: { show: false }, size: 40 }] : []),
        series,
        legend: { live: true },
        hooks: zoom.hooks,
        plugins: [markersPlugin()],
      };
      const empty = c.el.querySelector(".chart-empty");
      if (empty) empty.remove();
      if (c.plot) {
        zoom.remove(c.plot);
        c.plot.destroy();
      }
      c.plot = new uPlot(opts, alignedData(plotLists(keys)), c.el);
      zoom.add(c.plot);
      if (smoothing) {
        // the raw entries stay in the legend's table (tests count them) but the smoothed entry names both
        c.plot.root.querySelectorAll(".u-legend .u-series").forEach((row, i) => {
          if (i > 0 && i % 2 === 1) row.classList.add("raw-series");
        });
      }
      // the legend wraps onto a second line where its entries do not fit: the plot gives it the room
      c.el.classList.toggle("smoothed", smoothing > 0);
      const legend = c.plot.root.querySelector(".u-legend");
      const legendHeight = Math.max(LEGEND_HEIGHT, legend ? legend.offsetHeight + 4 : 0);
      if (legendHeight !== (c.legendHeight || LEGEND_HEIGHT)) {
        c.legendHeight = legendHeight;
        zoom.quietly(c.plot, () => c.plot.setSize({ width, height: Math.max(120, c.el.clientHeight - legendHeight) }));
      }
      c.keys = keys;
      c.sig = plotSignature(c, keys);
    }

    function plotSignature(c, keys) {
      return keys.join() + "|" + (smoothing > 0) + "|" + JSON.stringify(logOptions(c, keys));
    }

    function activeKeys(spec) {
      return spec.series.map((s) => s.key).filter((k) => store.series.has(k) && store.series.get(k).xs.length);
    }

    function draw() {
      drawQueued = false;
      if (typeof uPlot === "undefined") return;
      const z = zoom.zoom;
      charts.forEach((c) => {
        const keys = activeKeys(c.spec);
        if (!keys.length) return;
        if (!c.plot || plotSignature(c, keys) !== c.sig) {
          buildPlot(c, keys);
        } else {
          zoom.quietly(c.plot, () => c.plot.setData(alignedData(plotLists(keys))));
        }
        // how many points the first series shows (tests and curious users read this): in a zoom, those in range
        const first = seriesFor(keys[0]);
        let n = 0;
        for (let i = 0; i < first.xs.length; i++) {
          if (first.ys[i] !== null && (!z || (first.xs[i] >= z.min && first.xs[i] <= z.max))) n++;
        }
        c.el.dataset.points = String(n);
      });
    }

    function scheduleDraw() {
      if (drawQueued) return;
      drawQueued = true;
      requestAnimationFrame(draw);
    }

    const WAITING = "Waiting for data…";
    CHARTS.forEach((spec) => {
      const el = document.getElementById("chart-" + spec.id);
      if (!el) return;
      const note = document.createElement("div");
      note.className = "chart-empty";
      // a job that ended without metrics will never fill its charts: say so instead of "waiting"
      note.textContent = document.getElementById("charts")?.dataset.emptyNote || WAITING;
      el.appendChild(note);
      el.dataset.points = "0";
      charts.set(spec.id, { spec, el, plot: null, keys: [], log: false, sig: "" });
    });

    // a new colour theme (static/js/theme.js): build the charts again in its colours
    document.addEventListener("tuneboard:theme", () => charts.forEach((c) => { if (c.plot) buildPlot(c, c.keys); }));

    document.querySelectorAll("[data-log-toggle]").forEach((box) => {
      const c = charts.get(box.dataset.logToggle);
      if (!c) return;
      box.checked = Boolean(CH.settings.get("log." + c.spec.id, false));
      c.log = box.checked;
      box.addEventListener("change", () => {
        c.log = box.checked;
        CH.settings.set("log." + c.spec.id, c.log);
        if (c.plot) buildPlot(c, c.keys);
      });
    });

    smoothing = CH.smoothingControl(document.getElementById("chart-smoothing"), document.getElementById("chart-smoothing-value"), (w) => {
      smoothing = w;
      scheduleDraw();
    });

    // CSV and PNG of one chart: what it shows (the zoomed range, the smoothed lines too when smoothing)
    function chartTitle(c) {
      const h1 = document.querySelector(".detail-head h1");
      const cap = c.el.closest("figure")?.querySelector(".chart-title");
      return (h1 ? h1.textContent.trim().replace(/\s+/g, " ") + " — " : "") + (cap ? cap.textContent.trim() : c.spec.id);
    }
    document.querySelectorAll("[data-chart-download]").forEach((button) => {
      button.addEventListener("click", () => {
        const c = charts.get(button.dataset.chartId);
        if (!c || !c.plot) return;
        const u = c.plot;
        const name = "job-" + jobId + "-" + c.spec.id;
        if (button.dataset.chartDownload === "png") {
          const items = u.series.slice(1).filter((s, i) => !smoothing || i % 2 === 1)
            .map((s) => ({ label: s.label, colour: typeof s.stroke === "function" ? s.stroke(u, 1) : s.stroke }));
          CH.downloadPng(name + ".png", u, chartTitle(c), items);
          return;
        }
        const header = ["step"];
        c.keys.forEach((k) => { header.push(k); if (smoothing) header.push(k + "_smoothed"); });
        const { min, max } = u.scales.x;
        CH.downloadCsv(name + ".csv", CH.csv(header, u.data, (i) => u.data[0][i] >= min && u.data[0][i] <= max));
      });
    });

    if (typeof ResizeObserver !== "undefined") {
      const ro = new ResizeObserver(() => {
        charts.forEach((c) => {
          if (!c.plot) return;
          const legend = c.plot.root.querySelector(".u-legend");
          c.legendHeight = Math.max(LEGEND_HEIGHT, legend ? legend.offsetHeight + 4 : 0);
          zoom.quietly(c.plot, () => c.plot.setSize({ width: Math.max(200, c.el.clientWidth), height: Math.max(120, c.el.clientHeight - c.legendHeight) }));
        });
      });
      charts.forEach((c) => ro.observe(c.el));
    }
    // --- the rest of the page
    function updateActions(s) {
      const actions = document.getElementById("job-actions");
      if (!actions) return;
      const cancel = actions.querySelector('[data-action="cancel"]');
      const resume = actions.querySelector('[data-action="resume"]');
      const download = actions.querySelector('[data-action="download"]');
      if (cancel) cancel.hidden = !STATUS.cancellable.has(s.status);
      if (resume) resume.hidden = !STATUS.resumable.has(s.status);
      if (download) download.hidden = !s.has_adapter;
      const failure = document.getElementById("failure-reason");
      if (failure) failure.hidden = !s.failure_reason;
    }

    let logsTimer = null;
    let logsInFlight = false;
    function refreshLogs(soon) {
      if (logsTimer) return;
      logsTimer = setTimeout(async () => {
        logsTimer = null;
        if (logsInFlight) return;
        logsInFlight = true;
        try {
          const r = await fetch("/api/jobs/" + jobId + "/logs", { headers: { Accept: "application/json" } });
          if (r.ok) {
            const pre = document.getElementById("logs");
            const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
            const logs = await r.json();  // the run's own log once it exists, else the raw process output
            const text = logs.log_tail || logs.stderr_tail || "No output yet.";
            if (pre.textContent !== text) {
              pre.textContent = text;
              if (atBottom) pre.scrollTop = pre.scrollHeight;
            }
          }
        } catch (err) {
          /* the next event retries */
        } finally {
          logsInFlight = false;
        }
      }, soon ? 0 : 2000);
    }

    let eventsInFlight = false;
    let eventsAgain = false;
    async function fetchNewEvents() {
      if (eventsInFlight) {
        eventsAgain = true;
        return;
      }
      eventsInFlight = true;
      try {
        const r = await fetch("/jobs/" + jobId + "/partials/events?after_seq=" + lastSeq);
        if (!r.ok) return;
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const body = document.getElementById("events-body");
        const box = document.getElementById("events-box");
        const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
        const rows = doc.getElementById("new-events").content.querySelectorAll("tr[data-seq]");
        rows.forEach((row) => {
          const seq = Number(row.dataset.seq);
          if (body.querySelector('tr[data-seq="' + seq + '"]')) return;
          const node = document.importNode(row, true);
          body.appendChild(node);
          localizeTimes(node);
          lastSeq = Math.max(lastSeq, seq);
        });
        if (rows.length) {
          document.getElementById("events-empty").hidden = true;
          if (atBottom) box.scrollTop = box.scrollHeight;
        }
        const list = document.getElementById("samples-list");
        const cards = Array.from(doc.getElementById("new-samples").content.querySelectorAll("article[data-seq]"));
        cards.reverse().forEach((card) => {
          // the fragment lists newest first; insert oldest first at the top so the newest ends up first
          const seq = Number(card.dataset.seq);
          if (list.querySelector('article[data-seq="' + seq + '"]')) return;
          list.insertBefore(document.importNode(card, true), list.firstChild);
          lastSeq = Math.max(lastSeq, seq);
        });
        if (cards.length) document.getElementById("samples-empty").hidden = true;
      } catch (err) {
        /* the next events message retries */
      } finally {
        eventsInFlight = false;
        if (eventsAgain) {
          eventsAgain = false;
          fetchNewEvents();
        }
      }
    }

    function onJob(s) {
      status = s.status;
      totalSteps = s.total_steps || totalSteps;
      applySummary(main, s);
      updateActions(s);
      if (TERMINAL.has(s.status)) refreshLogs(true);
      else document.querySelectorAll("#charts .chart-empty").forEach((n) => { n.textContent = WAITING; });  // resumed
      scheduleDraw();
      // other panels of the page (static/js/takeaway.js) follow the job's state too
      document.dispatchEvent(new CustomEvent("tuneboard:job", { detail: s }));
    }

    function onMetrics(msg) {
      const series = (msg && msg.series) || {};
      Object.entries(series).forEach(([key, points]) => {
        store.merge(key, points);
        // a point at or before the zoomed read's last one (a guard rollback, a resume): read the range again
        const z = zoomData && zoomData.series.get(key);
        if (z && z.xs.length && points.length && points[0][0] <= z.xs[z.xs.length - 1]) {
          zoomData = null;
          clearTimeout(zoomTimer);
          zoomTimer = setTimeout(fetchZoom, 120);
        }
      });
      scheduleDraw();
    }

    function onEvents(list) {
      let listed = false;
      (list || []).forEach((ev) => {
        if (ev.kind in MARKER_COLORS && !markers.some((m) => m.step === ev.step && m.kind === ev.kind)) {
          markers.push({ step: ev.step, kind: ev.kind });
        }
        if (ev.kind !== "progress" && ev.kind !== "heartbeat" && ev.seq > lastSeq) listed = true;
      });
      if (listed) fetchNewEvents();
      refreshLogs(false);
      charts.forEach((c) => c.plot && c.plot.redraw(false));
    }

    async function start() {
      try {
        const r = await fetch("/api/jobs/" + jobId + "/metrics?max_points=2000");
        if (r.ok) onMetrics(await r.json());
      } catch (err) {
        console.warn("tuneboard: could not load the metric history", err);
      }
      connect();
      // a resumed job runs again: listen again (the stream closed when the job had finished)
      document.body.addEventListener("htmx:load", (e) => {
        if (e.target && e.target.id === "job-actions" && (!es || es.readyState === EventSource.CLOSED)) connect();
      });
    }

    let es = null;
    function connect() {
      const step = store.lastStep();
      const cursor = lastSeq + "." + (step === null ? "" : step);
      es = openStream(main.dataset.stream + "?cursor=" + encodeURIComponent(cursor), {
        job: onJob,
        metrics: onMetrics,
        events: onEvents,
        end: () => {
          es.close(); // finished: the page holds the final state
          refreshLogs(true);
        },
        error: (data) => {
          if (data && data.detail) {
            console.warn("tuneboard:", data.detail);
            es.close();
          }
        },
      });
    }

    if (typeof uPlot === "undefined") {
      console.warn("tuneboard: uPlot did not load; charts are off");
    }
    start();
  }

  // shared with static/js/compare.js (the compare and sweep-group pages)
  window.TuneboardLive = { fmtNum, fmtDuration, localizeTimes, applySummary, openStream, makeStore, cssVar, TERMINAL };

  // ------------------------------------------------------------------ boot
  function boot() {
    localizeTimes(document);
    const main = document.getElementById("main");
    if (!main) return;
    if (main.dataset.page === "jobs-list") initJobsList(main);
    if (main.dataset.page === "job-detail") initJobDetail(main);
    if (main.dataset.page === "job-new") {
      // after a refused submit, put the keyboard on the first field that needs a fix
      const invalid = document.querySelector('#job-form [aria-invalid="true"], #config-text[aria-invalid="true"]');
      if (invalid) invalid.focus();
    }
    document.body.addEventListener("htmx:afterSwap", (e) => localizeTimes(e.target));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
