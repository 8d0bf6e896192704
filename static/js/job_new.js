// The new-job page: the estimate panel's "Create job" creates the job the user is editing. While
// "Paste a config" is open that is the pasted text (#text-form), otherwise the fields (#job-form); the
// button used to submit the fields even with a config pasted, creating a default job.
(function () {
  "use strict";

  function boot() {
    const panel = document.getElementById("paste-panel");
    const button = document.getElementById("side-create");
    if (!panel || !button) return;
    const sync = () => {
      const pasting = panel.open;
      button.setAttribute("form", pasting ? "text-form" : "job-form");
      button.textContent = pasting ? "Create job from the pasted config" : "Create job";
    };
    panel.addEventListener("toggle", sync);
    sync();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();

// Preference tuning: the form shows only the fields the chosen method reads (data-methods, rendered by
// app/jobs/form.py from contract/preference.py); a section left with none is hidden too.
(function () {
  "use strict";

  function boot() {
    const method = document.getElementById("f-method");
    if (!method) return;
    const sync = () => {
      document.querySelectorAll("[data-methods]").forEach((field) => {
        field.hidden = !field.dataset.methods.split(" ").includes(method.value);
      });
      document.querySelectorAll("fieldset.section").forEach((section) => {
        const fields = section.querySelectorAll(".field");
        if (fields.length) section.hidden = Array.from(fields).every((f) => f.hidden);
      });
    };
    method.addEventListener("change", sync);
    sync();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();

// Problems while the form is edited: the estimate panel (refreshed by htmx on every change) lists what the
// server would refuse; the inputs it names are marked invalid at once, not only after "Create job".
(function () {
  "use strict";

  function mark() {
    const listed = new Set(
      Array.from(document.querySelectorAll("[data-live-problems] [data-input]")).map((li) => li.dataset.input)
    );
    document.querySelectorAll("#job-form [data-live-invalid]").forEach((input) => {
      if (listed.has(input.id)) return;
      input.removeAttribute("aria-invalid");
      delete input.dataset.liveInvalid;
      input.closest(".field")?.classList.remove("has-error");
    });
    listed.forEach((id) => {
      const input = id && document.getElementById(id);
      if (!input || input.dataset.liveInvalid) return;
      input.setAttribute("aria-invalid", "true");
      input.dataset.liveInvalid = "1";
      input.closest(".field")?.classList.add("has-error");
    });
  }

  document.addEventListener("htmx:afterSwap", (e) => {
    if (e.target && e.target.id === "estimate") mark();
  });
})();
