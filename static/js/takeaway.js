/* Tuneboard job detail: the "Try the adapter" prompt box and the "Take it away" panel.
 *
 * The prompt box streams GET /api/jobs/{id}/try as server-sent events read through fetch() rather than
 * EventSource: fetch shows the server's refusal (409/422 with a message) and stops for good when asked,
 * where an EventSource would silently reconnect and start another generation. Stopping aborts the
 * request; the server then kills the generation process.
 * When the live stream reports that the job reached a final state, the panel is reloaded so the
 * prompt box, the checkpoints and the export button appear without a page reload.
 */
(function () {
  "use strict";

  // the finished statuses, as the server names them (static/js/format.js reads the page's vocabulary)
  const FINAL = window.TuneboardFormat ? window.TuneboardFormat.vocabulary.statuses.terminal : new Set();
  let controller = null;

  function el(id) {
    return document.getElementById(id);
  }

  function showError(text) {
    const box = el("try-error");
    if (!box) return;
    box.textContent = text || "";
    box.hidden = !text;
  }

  function setRunning(running) {
    const submit = el("try-submit");
    const stop = el("try-stop");
    if (submit) submit.disabled = running;
    if (stop) stop.hidden = !running;
  }

  /** Split an SSE byte stream into {event, data} messages (comments and pings are skipped). */
  function parseMessages(buffer, onMessage) {
    let sep;
    while ((sep = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, sep);
      buffer = buffer.slice(sep + 2);
      let event = "message";
      const data = [];
      block.split("\n").forEach((line) => {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      });
      if (data.length) onMessage(event, data.join("\n"));
    }
    return buffer;
  }

  async function runTry(form) {
    const outputs = { adapter: el("try-output-adapter"), base: el("try-output-base") };
    Object.values(outputs).forEach((o) => { if (o) o.textContent = ""; });
    showError("");
    const params = new URLSearchParams(new FormData(form));
    controller = new AbortController();
    setRunning(true);
    let finished = false;
    try {
      const r = await fetch(form.action + "?" + params.toString(), {
        headers: { Accept: "text/event-stream" },
        signal: controller.signal,
      });
      if (!r.ok) {
        let detail = "the server refused (" + r.status + ")";
        try {
          const body = await r.json();
          if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
        } catch (err) { /* not JSON */ }
        showError(detail);
        return;
      }
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = parseMessages(buffer + decoder.decode(value, { stream: true }), (event, data) => {
          const msg = JSON.parse(data);
          if (event === "token" && outputs[msg.side]) outputs[msg.side].textContent += msg.token;
          else if (event === "done") finished = true;
          else if (event === "error") { finished = true; showError(msg.detail); }
        });
      }
      if (!finished) showError("The answer stopped early (connection closed); try again.");
      // an answer of only spaces and newlines (or none at all) would look like nothing happened
      Object.values(outputs).forEach((o) => { if (o) o.dataset.blank = String(!o.textContent.trim()); });
    } catch (err) {
      if (err.name !== "AbortError") showError("Could not reach the server: " + err.message);
    } finally {
      controller = null;
      setRunning(false);
    }
  }

  async function reloadPanel(jobId) {
    try {
      const r = await fetch("/jobs/" + jobId + "/partials/takeaway");
      if (!r.ok) return;
      const old = el("takeaway");
      if (!old) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById("takeaway");
      if (!fresh) return;
      const node = document.importNode(fresh, true);
      old.replaceWith(node);
      if (window.htmx) window.htmx.process(node); // the export button and the progress poll use htmx
    } catch (err) {
      /* the page still works after a reload */
    }
  }

  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (!(form instanceof HTMLFormElement) || form.id !== "try-form") return;
    e.preventDefault();
    if (!controller) runTry(form);
  });

  document.addEventListener("click", (e) => {
    if (e.target && e.target.id === "try-stop" && controller) controller.abort();
  });

  document.addEventListener("tuneboard:job", (e) => {
    const panel = el("takeaway");
    const s = e.detail || {};
    if (!panel || !FINAL.has(s.status) || panel.dataset.status === s.status) return;
    panel.dataset.status = s.status;
    reloadPanel(panel.dataset.jobId);
  });
})();
