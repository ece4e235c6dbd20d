// Starts ReDoc on the spec named by the page (no inline script: the pages' CSP forbids it).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("redoc");
  Redoc.init(root.dataset.spec, { disableSearch: false, hideDownloadButton: false }, root);
});
