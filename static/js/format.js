/* Tuneboard: the one number/duration formatter of the scripts, and the vocabulary the server hands them.
 *
 * window.TuneboardFormat = { fmtNum, fmtDuration, vocabulary }
 *
 * fmtNum follows the rules written down in app/templating.py (whose `num` filter renders the same text
 * on the server), so a value reads the same before and after a script updates it:
 *   missing → "—"; NaN / ±infinity (also "nan", "inf", "-inf") → "NaN", "∞", "−∞"; zero → "0";
 *   a whole number below 1e15 → grouped digits ("12,345");
 *   below 0.001 or from 1e6 on → scientific with digits-1 decimals, bare exponent ("1.000e-4");
 *   otherwise digits significant digits, trailing zeros dropped, integer part grouped ("1,234.5").
 *
 * vocabulary: the JSON in <script id="tuneboard-vocabulary"> (base.html): job statuses and their sets
 * (app/jobs/status.py) and the metric panels (contract/metrics.py). Scripts keep no lists of their own.
 * Loaded before every other script of the page (all deferred, so in document order).
 */
(function () {
  "use strict";

  const NONFINITE_TEXT = { nan: "NaN", inf: "∞", "-inf": "−∞" };
  const WHOLE_LIMIT = 1e15;
  const SCIENTIFIC_BELOW = 1e-3;
  const SCIENTIFIC_FROM = 1e6;

  function grouped(whole) {
    return whole.toLocaleString("en-US", { maximumFractionDigits: 0 });
  }

  function fmtNum(v, digits) {
    if (digits === undefined) digits = 4;
    if (v === null || v === undefined) return "—";
    if (typeof v === "string") return v in NONFINITE_TEXT ? NONFINITE_TEXT[v] : v;
    if (typeof v !== "number") return String(v);
    if (!Number.isFinite(v)) return Number.isNaN(v) ? "NaN" : (v > 0 ? "∞" : "−∞");
    if (v === 0) return "0";
    if (Number.isInteger(v) && Math.abs(v) < WHOLE_LIMIT) return grouped(v);
    if (Math.abs(v) < SCIENTIFIC_BELOW || Math.abs(v) >= SCIENTIFIC_FROM) {
      return v.toExponential(Math.max(1, digits - 1)).replace("e+", "e");
    }
    const rounded = Number(v.toPrecision(digits));
    if (Number.isInteger(rounded)) return grouped(rounded);
    const sign = rounded < 0 ? "-" : "";
    const [whole, fraction] = String(Math.abs(rounded)).split(".");
    return sign + grouped(Number(whole)) + "." + fraction;
  }

  function fmtDuration(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "—";
    s = Math.max(0, Math.round(s));
    const pad = (n) => String(n).padStart(2, "0");
    if (s >= 3600) return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " min";
    if (s >= 60) return Math.floor(s / 60) + " min " + pad(s % 60) + " s";
    return s + " s";
  }

  function readVocabulary() {
    const el = document.getElementById("tuneboard-vocabulary");
    const raw = el ? JSON.parse(el.textContent || "{}") : {};
    const statuses = raw.statuses || {};
    const set = (name) => new Set(statuses[name] || []);
    return {
      statuses: {
        all: statuses.all || [],
        terminal: set("terminal"),
        active: set("active"),
        unfinished: set("unfinished"),
        cancellable: set("cancellable"),
        resumable: set("resumable"),
        progressing: set("progressing"),
        badgeClass: (status) => (statuses.badge_class || {})[status] || "badge badge-" + status,
        titleMark: (status) => (statuses.title_mark || {})[status] || "",
      },
      panels: raw.panels || [],
      metrics: raw.metrics || [],
    };
  }

  window.TuneboardFormat = { fmtNum, fmtDuration, vocabulary: readVocabulary() };
})();
