/* Tuneboard chart habits, shared by the job page (live.js) and the compare page (compare.js).
 *
 * - ema(): TensorBoard's smoothing, an exponential moving average debiased for its start; a non-finite point
 *   (null here: the server sends NaN/inf as null) stays a gap in the smoothed line and does not move it.
 * - zoomGroup(): drag or setScale('x', ...) zooms; every plot of the group follows the same x range; data
 *   updates keep it; double-click or reset() returns to the full range.
 * - settings: smoothing and log scale, kept per browser in localStorage ("tuneboard.chart.*").
 * - csv()/png(): a chart's series as step,key1,key2… and its canvas with the title, as downloads.
 * Loaded before live.js and compare.js (all deferred, in document order).
 */
(function () {
  "use strict";

  const PREFIX = "tuneboard.chart.";
  const memory = new Map(); // when this browser refuses to store (private mode): this page only

  const settings = {
    get(name, fallback) {
      if (memory.has(name)) return memory.get(name);
      try {
        const v = localStorage.getItem(PREFIX + name);
        return v === null ? fallback : JSON.parse(v);
      } catch (e) {
        return fallback;
      }
    },
    set(name, value) {
      memory.set(name, value);
      try {
        localStorage.setItem(PREFIX + name, JSON.stringify(value));
      } catch (e) {
        /* kept for this page only */
      }
    },
  };

  /** TensorBoard-style smoothing of ys (weight 0 = off, up to 0.999); null stays null and is skipped. */
  function ema(ys, weight) {
    const w = Math.min(Math.max(Number(weight) || 0, 0), 0.999);
    if (!w) return ys.slice();
    const out = new Array(ys.length);
    let last = 0;
    let n = 0;
    for (let i = 0; i < ys.length; i++) {
      const v = ys[i];
      if (typeof v !== "number" || !Number.isFinite(v)) {
        out[i] = v; // a NaN/inf point (or a hole) is shown as it is, never averaged away
        continue;
      }
      last = last * w + (1 - w) * v;
      n++;
      out[i] = last / (1 - Math.pow(w, n));
    }
    return out;
  }

  /**
   * A set of uPlot charts sharing one x zoom. fullRange(u, min, max) is the unzoomed x range; onZoom(zoom)
   * hears of every change ({min, max} or null). Plots take group.range as their x scale's range, group.hooks
   * in their hooks and group.cursor() as their cursor; group.quietly(plot, fn) runs a data or size change.
   */
  function zoomGroup(fullRange, onZoom) {
    const plots = new Set();
    let zoom = null;
    let internal = 0;

    function dataExtent(u) {
      const xs = u.data && u.data[0];
      return xs && xs.length ? [xs[0], xs[xs.length - 1]] : [null, null];
    }

    // uPlot calls this for its own data-driven ranging and for a user's drag or setScale alike: the ones we
    // start (quietly, or while the plot is not ready yet) get the group's range, anything else is a zoom
    function range(u, min, max) {
      if (internal || u.status !== 1) return zoom ? [zoom.min, zoom.max] : fullRange(u, min, max);
      return [min, max];
    }

    function quietly(u, fn) {
      internal++;
      try {
        u.batch(fn);
      } finally {
        internal--;
      }
    }

    function setAll(except) {
      plots.forEach((p) => {
        if (p === except || !p.data || !p.data[0] || !p.data[0].length) return;
        const [lo, hi] = dataExtent(p);
        quietly(p, () => p.setScale("x", zoom ? { min: zoom.min, max: zoom.max } : { min: lo, max: hi }));
      });
    }

    function onSetScale(u, key) {
      if (key !== "x" || internal || u.status !== 1) return;
      const { min, max } = u.scales.x;
      if (min === null || max === null) return;
      const [lo, hi] = dataExtent(u);
      const full = fullRange(u, lo, hi);
      if (min <= full[0] && max >= full[1]) {
        if (zoom) reset(); // zoomed out to everything
        return;
      }
      if (zoom && zoom.min === min && zoom.max === max) return;
      zoom = { min, max };
      setAll(u);
      onZoom(zoom);
    }

    function reset() {
      if (!zoom) return;
      zoom = null;
      setAll(null);
      onZoom(null);
    }

    function zoomTo(min, max) {
      zoom = { min, max };
      setAll(null);
      onZoom(zoom);
    }

    return {
      range,
      quietly,
      reset,
      zoomTo,
      get zoom() { return zoom; },
      add(u) { plots.add(u); },
      remove(u) { plots.delete(u); },
      hooks: { setScale: [onSetScale] },
      /** uPlot cursor options: drag along x zooms; double-click returns to the full range. */
      cursor() {
        return {
          drag: { x: true, y: false },
          bind: { dblclick: () => () => { reset(); return null; } },
        };
      },
    };
  }

  /** The y scale of a log chart: log10 for positive data, asinh ("symlog") where values reach 0 or below. */
  function logScale(valueLists) {
    let minAbs = Infinity;
    let nonPositive = false;
    valueLists.forEach((ys) => ys.forEach((v) => {
      if (typeof v !== "number" || !Number.isFinite(v)) return;
      if (v <= 0) nonPositive = true;
      if (v !== 0) minAbs = Math.min(minAbs, Math.abs(v));
    }));
    if (!nonPositive) return { distr: 3 };
    const linear = Number.isFinite(minAbs) ? Math.pow(10, Math.floor(Math.log10(minAbs))) : 1;
    return { distr: 4, asinh: linear };
  }

  /** A y range with room around the data; a flat line (a zoom into a constant stretch) gets some too. */
  function yRange(u, min, max) {
    if (min === null || max === null) return [0, 1];
    const size = Math.max(Math.abs(min), Math.abs(max));
    const r = max > min ? uPlot.rangeNum(min, max, 0.1, true) : [min, max];
    if (r[1] - r[0] > size * 1e-6) return r;
    const pad = size * 0.1 || 1; // flat to within rounding: centre the line
    return [(min + max) / 2 - pad, (min + max) / 2 + pad];
  }

  function csvCell(v) {
    if (v === undefined) return ""; // no point at this step
    if (v === null || (typeof v === "number" && !Number.isFinite(v))) return "nan"; // a NaN/inf point
    const s = String(v);
    return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  /** CSV text: a header row, then rows of the columns (columns[0] is the x values); a NaN/inf point is "nan",
   * a series without a point at that x an empty cell. */
  function csv(header, columns, keep) {
    const lines = [header.map(csvCell).join(",")];
    const n = columns.length ? columns[0].length : 0;
    for (let i = 0; i < n; i++) {
      if (keep && !keep(i)) continue;
      const row = columns.map((c) => c[i]);
      if (row.slice(1).every((v) => v === undefined)) continue;
      lines.push(row.map(csvCell).join(","));
    }
    return lines.join("\n") + "\n";
  }

  function download(filename, blob) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  }

  function cssVar(name, fallback) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  /** A canvas: the title and a key of the series (label, colour) over the plot's own canvas. */
  function pngCanvas(u, title, keyItems) {
    const src = u.ctx.canvas;
    const dpr = src.width / Math.max(1, u.width) || 1;
    const band = Math.round(30 * dpr);
    const out = document.createElement("canvas");
    out.width = src.width;
    out.height = src.height + band;
    const ctx = out.getContext("2d");
    ctx.fillStyle = cssVar("--surface", "#fff");
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.textBaseline = "middle";
    ctx.fillStyle = cssVar("--text", "#111");
    ctx.font = "600 " + Math.round(13 * dpr) + "px system-ui, sans-serif";
    let x = Math.round(8 * dpr);
    ctx.fillText(title, x, band / 2);
    x += ctx.measureText(title).width + 16 * dpr;
    ctx.font = Math.round(11 * dpr) + "px system-ui, sans-serif";
    (keyItems || []).forEach(({ label, colour }) => {
      if (x > out.width - 40 * dpr) return;
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2 * dpr;
      ctx.beginPath();
      ctx.moveTo(x, band / 2);
      ctx.lineTo(x + 14 * dpr, band / 2);
      ctx.stroke();
      x += 18 * dpr;
      ctx.fillStyle = cssVar("--muted", "#666");
      ctx.fillText(label, x, band / 2);
      x += ctx.measureText(label).width + 12 * dpr;
    });
    ctx.drawImage(src, 0, band);
    return out;
  }

  function downloadPng(filename, u, title, keyItems) {
    pngCanvas(u, title, keyItems).toBlob((blob) => { if (blob) download(filename, blob); }, "image/png");
  }

  function downloadCsv(filename, text) {
    download(filename, new Blob([text], { type: "text/csv" }));
  }

  /** Wire a smoothing slider (input[type=range]) and its <output>: onChange(weight) after each move. */
  function smoothingControl(input, output, onChange) {
    if (!input) return 0;
    const show = (w) => { if (output) output.textContent = w ? w.toFixed(2) : "off"; };
    const start = Number(settings.get("smoothing", 0)) || 0;
    input.value = String(start);
    show(start);
    input.addEventListener("input", () => {
      const w = Number(input.value) || 0;
      show(w);
      settings.set("smoothing", w);
      onChange(w);
    });
    return start;
  }

  window.TuneboardCharts = { settings, ema, zoomGroup, logScale, yRange, csv, downloadCsv, downloadPng, pngCanvas, smoothingControl };
})();
