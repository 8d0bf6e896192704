/* The jobs list: search as you type, filters without a reload, keyboard shortcuts (documented on the page).
 *
 * Without this file the filter form is a plain GET of "/". With it, a change asks the server for the
 * `results` block only (header X-Jobs-Partial: 1) and swaps its rows into the same <tbody>, so live.js keeps
 * updating them. live.js adds a row for every job the stream mentions; on a filtered, sorted or later page
 * (and for older runs on the first) those rows do not belong here and are taken out again, with a notice
 * when a new run started meanwhile.
 */
(function () {
  "use strict";

  const main = document.querySelector('main[data-page="jobs-list"]');
  if (!main) return;
  const form = document.getElementById("list-filters");
  const search = document.getElementById("list-q");
  const body = document.getElementById("jobs-body");
  const status = document.getElementById("shortcut-status");
  let results = document.getElementById("jobs-results");
  let known = new Set();
  let swapping = false;
  let pending = null;
  let timer = null;

  function rememberRows() {
    known = new Set(Array.from(body.rows).map((r) => r.dataset.jobId));
  }

  function say(text) {
    if (status) status.textContent = text;
  }

  // ------------------------------------------------------------------ rows live.js adds
  function reconcile(records) {
    if (swapping) return;
    const live = results.dataset.live === "1";
    const maxId = Number(results.dataset.maxId || 0);
    let newer = false;
    records.forEach((rec) => {
      rec.addedNodes.forEach((node) => {
        if (!(node instanceof HTMLTableRowElement) || known.has(node.dataset.jobId)) return;
        const id = Number(node.dataset.jobId);
        if (live && id > maxId) return; // a run created since the page loaded: it belongs at the top
        if (id > maxId) newer = true;
        node.remove();
      });
    });
    if (newer) document.getElementById("new-runs-notice").hidden = false;
    document.getElementById("jobs-table-wrap").hidden = body.rows.length === 0;
    if (form && body.rows.length) form.hidden = false; // the first run of an empty dashboard
  }
  new MutationObserver(reconcile).observe(body, { childList: true });

  // ------------------------------------------------------------------ search and filters without a reload
  function queryString() {
    const params = new URLSearchParams();
    new FormData(form).forEach((value, key) => {
      const text = String(value).trim();
      const isDefault = (key === "sort" && text === "newest") || (key === "archived" && text === "hide");
      if (text && !isDefault) params.append(key, text);
    });
    return params.toString();
  }

  function replaceById(doc, id) {
    const fresh = doc.getElementById(id);
    const old = document.getElementById(id);
    if (fresh && old) old.replaceWith(fresh);
  }

  async function refresh() {
    const qs = queryString();
    if (pending) pending.abort();
    const controller = new AbortController();
    pending = controller;
    let response;
    try {
      response = await fetch("/?" + qs, { headers: { "X-Jobs-Partial": "1" }, signal: controller.signal });
    } catch (err) {
      if (err.name !== "AbortError") say("Could not reach the dashboard; the list was not updated.");
      return;
    }
    if (pending !== controller) return;
    pending = null;
    const html = await response.text();
    const doc = new DOMParser().parseFromString(html, "text/html");
    const freshResults = doc.getElementById("jobs-results");
    const freshBody = doc.getElementById("jobs-body");
    if (!freshResults || !freshBody) return;
    swapping = true;
    body.replaceChildren(...Array.from(freshBody.children).map((r) => document.importNode(r, true)));
    swapping = false;
    rememberRows();
    ["live", "maxId", "query"].forEach((k) => (results.dataset[k] = freshResults.dataset[k] || ""));
    replaceById(doc, "list-meta");
    replaceById(doc, "list-pager");
    document.getElementById("jobs-table-wrap").hidden = body.rows.length === 0;
    history.replaceState(null, "", qs ? "/?" + qs : "/");
    // the compare button counts ticked boxes on `change`: tell it the rows changed
    const firstBox = body.querySelector('input[form="compare-form"]');
    if (firstBox) firstBox.dispatchEvent(new Event("change", { bubbles: true }));
    main.dispatchEvent(new CustomEvent("jobs-list:updated", { bubbles: true }));
  }

  function soon(delay) {
    clearTimeout(timer);
    timer = setTimeout(refresh, delay);
  }

  if (form) {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      clearTimeout(timer);
      refresh();
    });
    form.addEventListener("input", (e) => {
      if (e.target.matches('input[type="search"], input[type="text"]')) soon(250);
    });
    form.addEventListener("change", (e) => {
      if (e.target.matches("select, input[type=date]")) soon(0);
    });
  }

  // ------------------------------------------------------------------ keyboard shortcuts
  const NOT_TYPED = ["checkbox", "radio", "button", "submit", "reset"];
  /** Whether a key pressed in `target` is text being typed (then it is no shortcut). */
  function typing(target) {
    if (!(target instanceof HTMLElement)) return false;
    if (target.isContentEditable || target.closest("textarea, select")) return true;
    return target instanceof HTMLInputElement && !NOT_TYPED.includes(target.type);
  }

  document.addEventListener("keydown", (e) => {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Escape" && e.target === search) {
      if (search.value) {
        search.value = "";
        soon(0);
      } else {
        search.blur();
      }
      return;
    }
    if (typing(e.target)) return;
    if (e.key === "/") {
      e.preventDefault();
      search.focus();
      search.select();
    } else if (e.key === "n") {
      e.preventDefault();
      window.location.assign(document.getElementById("new-job-link").getAttribute("href"));
    } else if (e.key === "c") {
      const button = document.getElementById("compare-button");
      e.preventDefault();
      if (button.disabled) {
        say("Tick 2 to 8 runs first, then press c to compare them.");
      } else {
        document.getElementById("compare-form").requestSubmit(button);
      }
    }
  });

  rememberRows();
})();
