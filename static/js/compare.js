/* Tuneboard compare: overlaid curves of several runs, live from ONE EventSource (/api/compare/stream).
 *
 * Compare and sweep-group pages: `run` messages {"job_id", "row"?, "series"?} feed one series store per
 * run (the store from live.js: a point at or before the last step replaces the tail, as after a guard
 * rollback) and the summary table; `end` closes the stream once every run has finished. The metric and
 * x-axis pickers and the differences-only toggle redraw in place and write their state into the URL,
 * so the address bar is always a link to this exact view.
 * Jobs list: enables "Compare selected" while 2 to 8 rows are ticked.
 * Everything here is an enhancement: the server-rendered page is complete without it.
 */
(function () {
  "use strict";

  const MIN_RUNS = 2;
  const MAX_RUNS = 8;
  const SPARSE_POINTS = 40;
  const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 25000,
    50000, 100000, 200000, 250000, 500000, 1000000, 2000000, 5000000, 10000000];

  // ------------------------------------------------------------------ jobs list: pick runs to compare
  function initSelection() {
    const form = document.getElementById("compare-form");
    const button = document.getElementById("compare-button");
    const count = document.getElementById("compare-count");
    if (!form || !button) return;
    function boxes() {
      return Array.from(document.querySelectorAll('input[type="checkbox"][form="compare-form"]'));
    }
    function update() {
      const n = boxes().filter((b) => b.checked).length;
      const ok = n >= MIN_RUNS && n <= MAX_RUNS;
      button.disabled = !ok;
      button.setAttribute("aria-disabled", ok ? "false" : "true");
      button.title = ok ? "Compare the " + n + " ticked runs" : (n > MAX_RUNS ? "Tick at most " + MAX_RUNS + " runs" : "Tick 2 to 8 runs in the list, then compare them");
      count.textContent = n ? "(" + n + ")" : "";
    }
    document.addEventListener("change", (e) => {
      if (e.target && e.target.matches && e.target.matches('input[form="compare-form"]')) update();
    });
    update();
  }

  // ------------------------------------------------------------------ x axis mapping (mirrors app/compare/service.py map_to_x)
  /** [[x, y]] for a metric series, x taken from another series of the same run (tokens_seen, epoch). */
  function mapToX(metric, xSeries) {
    const known = [];
    if (xSeries) {
      for (let i = 0; i < xSeries.xs.length; i++) {
        if (xSeries.ys[i] !== null) known.push([xSeries.xs[i], xSeries.ys[i]]);
      }
    }
    if (!known.length) return [];
    if (known[0][0] > 0) known.unshift([0, 0]); // a run starts from no tokens seen, epoch 0
    const out = [];
    for (let i = 0; i < metric.xs.length; i++) {
      const step = metric.xs[i];
      let lo = 0;
      let hi = known.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (known[mid][0] < step) lo = mid + 1;
        else hi = mid;
      }
      let x;
      if (lo < known.length && known[lo][0] === step) x = known[lo][1];
      else if (lo > 0 && lo < known.length) {
        const [s0, x0] = known[lo - 1];
        const [s1, x1] = known[lo];
        x = x0 + ((x1 - x0) * (step - s0)) / (s1 - s0);
      } else continue; // past the last reported x value: not guessed
      out.push([x, metric.ys[i]]);
    }
    return out;
  }

  // ------------------------------------------------------------------ compare page
  function initCompare(main) {
    const L = window.TuneboardLive;
    const F = window.TuneboardFormat;
    const data = JSON.parse(document.getElementById("compare-data").textContent);
    const runs = data.runs;
    const stores = new Map(runs.map((r) => [r.id, L.makeStore()]));
    const received = new Set(); // runs whose history arrived (until then the server's legend stands)
    const chartEl = document.getElementById("compare-chart");
    const metricPicker = document.getElementById("metric-picker");
    const xPicker = document.getElementById("x-picker");
    const diffToggle = document.getElementById("diff-only");
    const submit = document.getElementById("controls-submit");
    if (submit) submit.hidden = true; // the pickers apply at once
    let metric = data.metric;
    let x = data.x;
    let plot = null;
    let plotKey = "";
    let drawQueued = false;
    const labels = new Map(window.TuneboardFormat.vocabulary.metrics.map((m) => [m.key, m.label]));
    const metricLabel = (key) => labels.get(key) || key;

    // chart habits (static/js/charts.js): zoom with a reset, smoothing, log scale, CSV/PNG
    const CH = window.TuneboardCharts;
    const resetButton = document.getElementById("compare-reset-zoom");
    const logBox = document.getElementById("compare-log");
    let smoothing = 0;
    let log = Boolean(CH.settings.get("compare.log", false));
    const zoom = CH.zoomGroup(
      (u, min, max) => (min === null || max === null ? [0, 1] : (min === max ? [min - 1, max + 1] : [min, max])),
      (z) => { if (resetButton) resetButton.hidden = !z; },
    );
    if (resetButton) resetButton.addEventListener("click", () => zoom.reset());
    if (logBox) {
      logBox.checked = log;
      logBox.addEventListener("change", () => {
        log = logBox.checked;
        CH.settings.set("compare.log", log);
        plotKey = "";
        scheduleDraw();
      });
    }
    smoothing = CH.smoothingControl(document.getElementById("compare-smoothing"), document.getElementById("compare-smoothing-value"), (w) => {
      smoothing = w;
      scheduleDraw();
    });

    window.tuneboardCompare = { stores, mapToX, zoom, get plot() { return plot; } };

    function pointsFor(run) {
      const store = stores.get(run.id);
      const s = store.series.get(metric);
      if (!s || !s.xs.length) return [];
      if (x === "step") return s.xs.map((step, i) => [step, s.ys[i]]);
      return mapToX(s, store.series.get(x));
    }

    function writeUrl() {
      const url = new URL(window.location.href);
      url.searchParams.set("metric", metric);
      url.searchParams.set("x", x);
      if (diffToggle && !diffToggle.checked) url.searchParams.set("diff", "0");
      else url.searchParams.delete("diff");
      const text = url.pathname + "?" + url.searchParams.toString().replace(/%2C/gi, ",");
      window.history.replaceState(null, "", text);
      const share = document.getElementById("share-link");
      if (share) share.href = text;
    }

    function legendItem(runId) {
      return document.querySelector('#compare-legend li[data-run="' + runId + '"]');
    }

    function setLegendValues(values) {
      runs.forEach((run, i) => {
        const li = legendItem(run.id);
        if (!li) return;
        const [v, raw] = values ? values[i] : [undefined, undefined];
        const text = v === null ? "NaN/inf" : v === undefined ? "" : F.fmtNum(v);
        // with smoothing: the smoothed value, then the raw one
        li.querySelector("[data-legend-value]").textContent = text + (raw === undefined || v === undefined ? "" : " (raw " + (raw === null ? "NaN/inf" : F.fmtNum(raw)) + ")");
      });
    }

    /** The signature of what needs a new plot (not just new data). */
    function plotSignature(perRun) {
      return metric + "|" + x + "|" + (smoothing > 0) + "|" + (log ? JSON.stringify(CH.logScale(perRun.map((pts) => pts.map((p) => p[1])))) : "");
    }

    function build(perRun) {
      const axis = L.cssVar("--chart-axis", "#666");
      const grid = L.cssVar("--chart-grid", "rgba(0,0,0,.07)");
      const dpr = window.devicePixelRatio || 1;
      const xLabel = metricLabel(x);
      const opts = {
        width: Math.max(240, chartEl.clientWidth),
        height: Math.max(160, chartEl.clientHeight),
        cursor: zoom.cursor(),
        legend: { show: false },
        scales: {
          x: { time: false, range: zoom.range },
          y: log ? CH.logScale(perRun.map((pts) => pts.map((p) => p[1]))) : { range: CH.yRange },
        },
        axes: [
          { stroke: axis, grid: { stroke: grid }, ticks: { stroke: grid }, label: xLabel, labelSize: 22,
            // steps are whole numbers: no 2.5 ticks
            incrs: x === "step" ? STEP_INCRS : undefined,
            values: (u, vals) => vals.map((v) => F.fmtNum(v, 3)) },
          { stroke: axis, grid: { stroke: grid }, ticks: { stroke: grid }, size: 60,
            values: (u, vals) => vals.map((v) => F.fmtNum(v, 3)) },
        ],
        series: [{ label: xLabel }].concat(...runs.map((run, i) => {
          const line = {
            label: "#" + run.id,
            stroke: L.cssVar("--cmp-" + run.colour, "#36c"),
            width: 1.75,
            dash: run.dash.length ? run.dash.map((d) => d * dpr) : undefined,
            spanGaps: false, // holes join (undefined); a NaN/inf point (null) shows as a gap
            // dots only where a run has few points (eval_loss): on dense curves they would hide the dashes
            points: { show: perRun[i].length <= SPARSE_POINTS, size: 5 },
          };
          // with smoothing: the raw line faint behind the smoothed one
          return smoothing ? [Object.assign({}, line, { label: "#" + run.id + " raw", alpha: 0.25, width: 1, points: { show: false } }), line] : [line];
        })),
        hooks: {
          setScale: zoom.hooks.setScale,
          setCursor: [(u) => {
            const idx = u.cursor.idx;
            const none = idx === null || idx === undefined;
            const per = smoothing ? 2 : 1;
            setLegendValues(none ? null : runs.map((r, i) => [u.data[i * per + per][idx], smoothing ? u.data[i * per + 1][idx] : undefined]));
            document.getElementById("cursor-x").textContent = none ? "" : "at " + xLabel + " " + F.fmtNum(u.data[0][idx]);
          }],
        },
      };
      chartEl.replaceChildren();
      if (plot) {
        zoom.remove(plot);
        plot.destroy();
      }
      plot = new uPlot(opts, aligned(perRun), chartEl);
      zoom.add(plot);
      plotKey = plotSignature(perRun);
    }

    /** uPlot's aligned data: the union of the runs' x values, null where a run has no point there. */
    function aligned(perRun) {
      const xsSet = new Set();
      perRun.forEach((pts) => pts.forEach((p) => xsSet.add(p[0])));
      const xs = Array.from(xsSet).sort((a, b) => a - b);
      const index = new Map(xs.map((v, i) => [v, i]));
      const out = [xs];
      perRun.forEach((pts) => {
        const ys = new Array(xs.length).fill(undefined);
        pts.forEach(([px, py]) => { ys[index.get(px)] = typeof py === "number" ? py : null; });
        if (smoothing) {
          const sm = new Array(xs.length).fill(undefined);
          const smoothed = CH.ema(pts.map((p) => (typeof p[1] === "number" ? p[1] : null)), smoothing);
          pts.forEach(([px], j) => { sm[index.get(px)] = smoothed[j]; });
          out.push(ys, sm);
        } else {
          out.push(ys);
        }
      });
      return out;
    }

    function draw() {
      drawQueued = false;
      const perRun = runs.map(pointsFor);
      let total = 0;
      runs.forEach((run, i) => {
        const n = perRun[i].filter((p) => typeof p[1] === "number").length;
        total += n;
        const li = legendItem(run.id);
        if (!li || !received.has(run.id)) return;
        li.classList.toggle("no-data", n === 0);
        const note = li.querySelector("[data-legend-nodata]");
        note.hidden = n > 0;
        const hasMetric = stores.get(run.id).series.has(metric);
        note.title = n > 0 ? "" : (hasMetric && x !== "step" ? "this run reported no " + x : "this run reported no " + metric + " yet");
      });
      chartEl.dataset.points = String(total);
      if (typeof uPlot === "undefined") return;
      if (!total) {
        if (plot) { zoom.remove(plot); plot.destroy(); plot = null; plotKey = ""; }
        const waiting = received.size < runs.length;
        const note = document.createElement("div");
        note.className = "chart-empty";
        note.textContent = waiting ? "Waiting for data…" : "No run has " + metric + " data" + (x !== "step" ? " against " + x : "") + " yet.";
        chartEl.replaceChildren(note);
        return;
      }
      const sig = plotSignature(perRun);
      if (plot && plotKey && plotKey.split("|")[1] !== x) zoom.reset(); // another x axis: the zoom's range means nothing there
      if (!plot || plotKey !== sig) build(perRun);
      else zoom.quietly(plot, () => plot.setData(aligned(perRun)));
    }

    function scheduleDraw() {
      if (drawQueued) return;
      drawQueued = true;
      requestAnimationFrame(draw);
    }
    // a new colour theme (static/js/theme.js): build the chart again in its colours
    document.addEventListener("tuneboard:theme", () => { plotKey = ""; scheduleDraw(); });

    function addMetricOption(key) {
      if (!metricPicker || Array.from(metricPicker.options).some((o) => o.value === key)) return;
      const opt = document.createElement("option");
      opt.value = key;
      opt.textContent = key;
      metricPicker.appendChild(opt);
    }

    function onRun(msg) {
      if (!msg || !stores.has(msg.job_id)) return;
      const store = stores.get(msg.job_id);
      if (msg.series) {
        Object.entries(msg.series).forEach(([key, points]) => {
          store.merge(key, points);
          addMetricOption(key);
        });
      }
      if (msg.row) {
        const tr = document.getElementById("compare-row-" + msg.job_id);
        if (tr) {
          L.applySummary(tr, msg.row);
          const d = tr.querySelector("[data-duration]");
          if (d) d.textContent = F.fmtDuration(msg.row.duration_seconds);
        }
      }
      received.add(msg.job_id);
      scheduleDraw();
    }

    if (metricPicker) metricPicker.addEventListener("change", () => {
      metric = metricPicker.value;
      document.getElementById("chart-metric").textContent = metric;
      writeUrl();
      scheduleDraw();
    });
    if (xPicker) xPicker.addEventListener("change", () => {
      x = xPicker.value;
      document.getElementById("chart-x").textContent = xPicker.options[xPicker.selectedIndex].textContent;
      writeUrl();
      scheduleDraw();
    });
    if (diffToggle) diffToggle.addEventListener("change", () => {
      const only = diffToggle.checked;
      document.querySelectorAll("#compare-config tr.same").forEach((tr) => { tr.hidden = only; });
      const identical = document.getElementById("config-identical");
      if (identical) identical.hidden = !only || document.querySelectorAll("#compare-config tr.differs").length > 0;
      document.getElementById("compare-config").dataset.diffOnly = only ? "true" : "false";
      writeUrl();
    });

    if (typeof ResizeObserver !== "undefined") {
      new ResizeObserver(() => {
        if (plot) zoom.quietly(plot, () => plot.setSize({ width: Math.max(240, chartEl.clientWidth), height: Math.max(160, chartEl.clientHeight) }));
      }).observe(chartEl);
    }
    chartEl.addEventListener("mouseleave", () => {
      setLegendValues(null);
      document.getElementById("cursor-x").textContent = "";
    });

    // CSV and PNG of the chart: what it shows (the zoomed range; the smoothed lines too when smoothing)
    document.querySelectorAll("[data-compare-download]").forEach((button) => {
      button.addEventListener("click", () => {
        if (!plot) return;
        const u = plot;
        const name = "compare-" + runs.map((r) => r.id).join("-") + "-" + metric.replace(/[^A-Za-z0-9_.-]+/g, "_");
        const title = metric + " by " + metricLabel(x);
        if (button.dataset.compareDownload === "png") {
          const items = runs.map((r, i) => ({ label: "#" + r.id, colour: L.cssVar("--cmp-" + r.colour, "#36c") }));
          CH.downloadPng(name + ".png", u, title, items);
          return;
        }
        const header = [x];
        runs.forEach((r) => { header.push("job_" + r.id); if (smoothing) header.push("job_" + r.id + "_smoothed"); });
        const { min, max } = u.scales.x;
        CH.downloadCsv(name + ".csv", CH.csv(header, u.data, (i) => u.data[0][i] >= min && u.data[0][i] <= max));
      });
    });

    const es = L.openStream(main.dataset.stream, {
      run: onRun,
      end: () => es.close(), // every run finished: the page holds the final state
    });
  }

  function boot() {
    const main = document.getElementById("main");
    if (!main) return;
    if (main.dataset.page === "jobs-list") initSelection();
    if (main.dataset.page === "compare") {
      if (!window.TuneboardLive) {
        console.warn("tuneboard: live.js did not load; the compare page stays static");
        return;
      }
      initCompare(main);
    }
  }

  // pages load this before live.js (both deferred): wait for the document, by when live.js has run
  if (window.TuneboardLive || document.readyState === "complete") boot();
  else document.addEventListener("DOMContentLoaded", boot);
})();
