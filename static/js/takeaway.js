/* Tuneboard job detail: the "Try the adapter" prompt box and the "Take it away" panel.
 *
 * The prompt box POSTs to /api/jobs/{id}/try (JSON: prompt, the conversation so far, decoding settings) and
 * reads the server-sent events of the answer through fetch() rather than EventSource: fetch can send a body,
 * shows the server's refusal (409/422 with a message) and stops for good when asked, where an EventSource
 * would silently reconnect and start another generation. Stopping aborts the request; the server then
 * kills the generation process. Until the first token, each answer box shows the stage the try is in
 * (waiting for a slot, loading the model, answering). A finished turn joins the conversation: the next
 * prompt is answered after it by both sides; "New conversation" forgets it.
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
    const fresh = el("try-new");
    if (submit) submit.disabled = running;
    if (stop) stop.hidden = !running;
    if (fresh && running) fresh.disabled = true;
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

  // the conversation so far: what the server gets as `history` (user prompts and the adapter's answers)
  let history = [];
  let lastTurn = null; // the finished turn shown in the answer boxes: moved into the log by the next prompt
  const SIDES = ["adapter", "base"];

  function addTurnToLog(turn) {
    const log = el("try-conversation");
    if (!log) return;
    const item = document.createElement("li");
    item.className = "try-turn";
    const you = document.createElement("p");
    you.className = "try-user";
    you.textContent = turn.prompt;
    item.appendChild(you);
    const answers = document.createElement("div");
    answers.className = "try-outputs";
    SIDES.forEach((side) => {
      const fig = document.createElement("figure");
      const cap = document.createElement("figcaption");
      cap.textContent = side === "adapter" ? "With the adapter" : "Base model alone";
      const pre = document.createElement("pre");
      pre.className = "try-output try-output-" + side;
      pre.textContent = turn[side];
      pre.dataset.blank = String(!turn[side].trim());
      fig.append(cap, pre);
      answers.appendChild(fig);
    });
    item.appendChild(answers);
    log.appendChild(item);
    log.hidden = false;
  }

  function newConversation() {
    history = [];
    lastTurn = null;
    const log = el("try-conversation");
    if (log) { log.replaceChildren(); log.hidden = true; }
    const current = el("try-current-prompt");
    if (current) { current.textContent = ""; current.hidden = true; }
    SIDES.forEach((side) => {
      const o = el("try-output-" + side);
      if (o) { o.textContent = ""; o.classList.remove("is-stage"); delete o.dataset.blank; }
    });
    const decoding = el("try-decoding");
    if (decoding) decoding.textContent = "";
    showError("");
    const button = el("try-new");
    if (button) button.disabled = true;
  }

  /** The request body: the form's fields, numbers as numbers (left as typed when not one: the server says why). */
  function requestBody(form) {
    const data = new FormData(form);
    const body = { prompt: String(data.get("prompt") || ""), history: history.slice() };
    ["max_new_tokens", "temperature", "top_p", "seed"].forEach((name) => {
      const value = String(data.get(name) || "").trim();
      if (value === "") return;
      const number = Number(value);
      body[name] = Number.isFinite(number) ? number : value;
    });
    body.raw = data.get("raw") === "true";
    return body;
  }

  function describeDecoding(d) {
    if (!d) return "";
    if (!d.temperature) return "greedy, up to " + d.max_new_tokens + " new tokens";
    return "temperature " + d.temperature + " · top-p " + d.top_p + " · seed " + d.seed +
      " · up to " + d.max_new_tokens + " new tokens";
  }

  async function runTry(form) {
    const outputs = { adapter: el("try-output-adapter"), base: el("try-output-base") };
    const answered = { adapter: false, base: false };
    const body = requestBody(form);
    if (lastTurn) { addTurnToLog(lastTurn); lastTurn = null; }
    const current = el("try-current-prompt");
    if (current) { current.textContent = body.prompt; current.hidden = false; }
    const showStage = (text) => {
      SIDES.forEach((side) => {
        const o = outputs[side];
        if (!o || answered[side]) return;
        o.textContent = text + "…";
        o.classList.add("is-stage");
      });
    };
    Object.values(outputs).forEach((o) => { if (o) delete o.dataset.blank; });
    showStage("sending the prompt");
    showError("");
    controller = new AbortController();
    setRunning(true);
    let finished = false;
    let failed = false;
    try {
      const r = await fetch(form.action, {
        method: "POST",
        headers: { Accept: "text/event-stream", "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!r.ok) {
        let detail = "the server refused (" + r.status + ")";
        try {
          const answer = await r.json();
          if (answer && answer.detail) detail = typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail);
        } catch (err) { /* not JSON */ }
        showError(detail);
        failed = true;
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
          const o = outputs[msg.side];
          if (event === "token" && o) {
            if (!answered[msg.side]) { answered[msg.side] = true; o.textContent = ""; o.classList.remove("is-stage"); }
            o.textContent += msg.token;
          } else if (event === "stage") showStage(msg.stage);
          else if (event === "decoding") {
            const d = el("try-decoding");
            if (d) d.textContent = describeDecoding(msg);
          } else if (event === "done") finished = true;
          else if (event === "error") { finished = true; failed = true; showError(msg.detail); }
        });
      }
      if (!finished) { failed = true; showError("The answer stopped early (connection closed); try again."); }
    } catch (err) {
      failed = true;
      if (err.name !== "AbortError") showError("Could not reach the server: " + err.message);
    } finally {
      controller = null;
      setRunning(false);
      SIDES.forEach((side) => {
        const o = outputs[side];
        if (!o) return;
        if (!answered[side]) { o.textContent = ""; o.classList.remove("is-stage"); }
        // an answer of only spaces and newlines (or none at all) would look like nothing happened
        o.dataset.blank = String(!o.textContent.trim());
      });
      if (!failed) {
        // the next prompt continues from here: both sides see the user's turns and the adapter's answers
        const turn = { prompt: body.prompt, adapter: outputs.adapter.textContent, base: outputs.base.textContent };
        history.push({ role: "user", content: turn.prompt }, { role: "assistant", content: turn.adapter });
        lastTurn = turn;
        const prompt = el("try-prompt");
        if (prompt) prompt.value = "";
      }
      const button = el("try-new");
      if (button) button.disabled = history.length === 0 && !lastTurn;
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
    if (e.target && e.target.id === "try-new" && !controller) newConversation();
  });

  document.addEventListener("tuneboard:job", (e) => {
    const panel = el("takeaway");
    const s = e.detail || {};
    if (!panel || !FINAL.has(s.status) || panel.dataset.status === s.status) return;
    panel.dataset.status = s.status;
    reloadPanel(panel.dataset.jobId);
  });
})();
