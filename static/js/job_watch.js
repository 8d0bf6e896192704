/* Tuneboard job page: knowing when a run ends without watching it.
 *
 * Follows the page's live job state (the "tuneboard:job" event static/js/live.js sends for every update):
 *  - the tab title leads with the progress or the outcome ("42% · running", "✓ succeeded", "✗ failed"), so a
 *    background tab tells how the run is doing;
 *  - the Duration tile counts while the run is on;
 *  - before the first metric, the charts say what the run is doing (the newest message of the events table);
 *  - the logs panel opens scrolled to its newest line;
 *  - opt-in browser notification when the run ends ("notify me when it ends"; the choice is kept in this
 *    browser's localStorage, and the browser asks for permission the first time).
 */
(function () {
  "use strict";

  const main = document.querySelector('main[data-page="job-detail"]');
  if (!main) return;
  const { fmtDuration, vocabulary } = window.TuneboardFormat;
  const TERMINAL = vocabulary.statuses.terminal;
  const NOTIFY_KEY = "tuneboard.notifyOnEnd";
  const baseTitle = document.title;
  const duration = document.getElementById("job-duration");
  const notifyBox = document.getElementById("notify-end");
  let status = main.dataset.status;
  let ticker = null;

  function titlePrefix(s) {
    const mark = vocabulary.statuses.titleMark(s.status);
    if (mark) return mark + " " + s.status;
    if (vocabulary.statuses.progressing.has(s.status) && s.progress !== null && s.progress !== undefined) {
      return Math.floor(s.progress * 100) + "% · " + s.status;
    }
    return s.status;
  }

  function showDuration() {
    if (!duration) return;
    const start = Date.parse(duration.dataset.runningAt || "");
    if (Number.isNaN(start)) { duration.textContent = "—"; return; }
    const finished = Date.parse(duration.dataset.finishedAt || "");
    const end = Number.isNaN(finished) ? (TERMINAL.has(status) ? NaN : Date.now()) : finished;
    duration.textContent = Number.isNaN(end) ? "—" : fmtDuration(Math.max(0, (end - start) / 1000));
  }

  function keepTicking() {
    const on = !TERMINAL.has(status) && duration && duration.dataset.runningAt;
    if (on && !ticker) ticker = setInterval(showDuration, 1000);
    if (!on && ticker) { clearInterval(ticker); ticker = null; }
  }

  function notifyEnd(s) {
    if (!notifyBox || !notifyBox.checked || typeof Notification === "undefined") return;
    if (Notification.permission !== "granted") return;
    const body = s.failure_reason || "Open the job page for its results.";
    const note = new Notification("#" + s.id + " " + (s.name || "(unnamed)") + ": " + s.status, { body, tag: "tuneboard-job-" + s.id });
    note.onclick = () => { window.focus(); note.close(); };
  }

  // what the run is doing before its first metric (checking data, preflight, loading, compiling): the newest
  // message of the events table, under the charts' "Waiting for data…"
  const eventsBody = document.getElementById("events-body");
  function latestMessage() {
    let newest = null;
    let seq = -1;
    if (!eventsBody) return "";
    eventsBody.querySelectorAll("tr.ev-log, tr.ev-status, tr.ev-preflight").forEach((tr) => {
      const n = Number(tr.dataset.seq);
      if (n > seq) { seq = n; newest = tr; }
    });
    const text = newest ? newest.querySelector(".ev-text") : null;
    return text ? text.textContent.trim() : "";
  }
  function showStage() {
    if (TERMINAL.has(status)) return;
    const message = latestMessage();
    document.querySelectorAll("#charts .chart-empty").forEach((note) => {
      if (!message) return;
      const stage = document.createElement("span");
      stage.className = "chart-stage";
      stage.textContent = message;
      note.replaceChildren("Waiting for data…", document.createElement("br"), stage);
    });
  }
  if (eventsBody) new MutationObserver(showStage).observe(eventsBody, { childList: true });

  // a chart note that depends on the device (the memory chart of a CPU run has no GPU utilisation)
  function showDeviceNotes(s) {
    const onCpu = s.assigned_gpus === "";
    vocabulary.panels.forEach((panel) => {
      if (!panel.cpu_note) return;
      const note = document.querySelector('[data-chart="' + panel.id + '"] .chart-note');
      if (note) note.textContent = note.title = onCpu ? panel.cpu_note : panel.note;
    });
  }

  document.addEventListener("tuneboard:job", (e) => {
    const s = e.detail;
    const wasRunning = !TERMINAL.has(status);
    status = s.status;
    document.title = titlePrefix(s) + " · " + baseTitle;
    if (duration) {
      duration.dataset.runningAt = s.running_at || s.starting_at || "";
      duration.dataset.finishedAt = s.finished_at || "";
      showDuration();
    }
    keepTicking();
    showStage();
    showDeviceNotes(s);
    if (wasRunning && TERMINAL.has(s.status)) notifyEnd(s);
    if (notifyBox) notifyBox.closest("label").hidden = TERMINAL.has(s.status) || typeof Notification === "undefined";
  });

  if (notifyBox && typeof Notification !== "undefined") {
    notifyBox.closest("label").hidden = TERMINAL.has(status);
    notifyBox.checked = localStorage.getItem(NOTIFY_KEY) === "1" && Notification.permission === "granted";
    notifyBox.addEventListener("change", async () => {
      if (notifyBox.checked && Notification.permission !== "granted") {
        notifyBox.checked = (await Notification.requestPermission()) === "granted";
      }
      localStorage.setItem(NOTIFY_KEY, notifyBox.checked ? "1" : "0");
    });
  }
  keepTicking();
  showStage();

  // the logs panel opens at its newest line (live.js keeps it there while it is scrolled to the bottom)
  const logs = document.getElementById("logs");
  if (logs) logs.scrollTop = logs.scrollHeight;
})();
