// Refreshes the live parts of a page: each element with data-live="URL" is replaced, every data-every ms, by the
// HTML the server renders at URL (escaped there). No build step, no library; without it the page still works.
"use strict";
(function () {
  function refresh(element) {
    if (document.hidden) return;
    fetch(element.dataset.live, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.redirected || !response.ok) return null;  // logged out or gone: keep what is shown
        return response.text();
      })
      .then(function (html) {
        if (html !== null && html !== undefined) element.innerHTML = html;
      })
      .catch(function () { /* the server restarts or the network drops: try again next time */ });
  }
  document.querySelectorAll("[data-live]").forEach(function (element) {
    var every = parseInt(element.dataset.every, 10) || 2000;
    setInterval(function () { refresh(element); }, every);
  });
})();
