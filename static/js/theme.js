/* Tuneboard: the colour theme, chosen per browser.
 *
 * The toggle in the top bar cycles "follows the system" → light → dark. The choice is kept in this browser's
 * localStorage ("tuneboard.theme"); until one is made, the page follows the system's light/dark setting, also
 * when it changes while the page is open. The inline script in base.html applies it before the first paint
 * (html[data-theme]); the stylesheets key their dark colours on that attribute. A "tuneboard:theme" event
 * tells the page's charts to redraw in the new colours.
 */
(function () {
  "use strict";

  const KEY = "tuneboard.theme";
  const ORDER = ["auto", "light", "dark"];
  const LABEL = { auto: "follows the system", light: "light", dark: "dark" };
  const ICON = { auto: "◐", light: "☀", dark: "☾" };
  const system = matchMedia("(prefers-color-scheme: dark)");
  const button = document.getElementById("theme-toggle");
  let unsaved = null; // the choice, when this browser refuses to store it (private mode): this page only

  function choice() {
    if (unsaved) return unsaved;
    try {
      const c = localStorage.getItem(KEY);
      return c === "light" || c === "dark" ? c : "auto";
    } catch (e) {
      return "auto";
    }
  }

  function apply() {
    const c = choice();
    const theme = c === "auto" ? (system.matches ? "dark" : "light") : c;
    const changed = document.documentElement.dataset.theme !== theme;
    document.documentElement.dataset.theme = theme;
    if (button) {
      button.textContent = ICON[c];
      button.title = "Colour theme: " + LABEL[c] + " (click to change)";
      button.setAttribute("aria-label", "Colour theme: " + LABEL[c]);
    }
    if (changed) document.dispatchEvent(new CustomEvent("tuneboard:theme", { detail: { theme } }));
  }

  if (button) {
    button.addEventListener("click", () => {
      const next = ORDER[(ORDER.indexOf(choice()) + 1) % ORDER.length];
      try {
        if (next === "auto") localStorage.removeItem(KEY);
        else localStorage.setItem(KEY, next);
        unsaved = null;
      } catch (e) {
        unsaved = next;
      }
      apply();
    });
  }
  system.addEventListener("change", apply);
  apply();
})();
