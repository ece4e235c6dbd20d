// Live progress of a job over its server-sent events (the API's stream, relayed by the
// console with the session's key). Text only: values are written with textContent, never as
// markup. The stream replays the job's events from the start, so the page catches up first.
"use strict";

(function () {
  const box = document.getElementById("progress");
  if (!box || box.dataset.final === "true" || !window.EventSource) {
    return;
  }
  const total = Number(box.dataset.iterations);
  const set = (id, text) => {
    const element = document.getElementById(id);
    if (element) {
      element.textContent = text;
    }
  };
  const seconds = (s) => (s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`);
  // ETA from the events' own timestamps (the server's clock): time per iteration since the
  // last start, times the iterations left.
  let start = null;
  const source = new EventSource(box.dataset.events);

  const on = (kind, handle) =>
    source.addEventListener(kind, (event) => handle(JSON.parse(event.data)));

  on("started", (event) => {
    start = { at: Date.parse(event.created_at), iteration: null };
    set("job-status", "running");
    document.getElementById("job-status").className = "status running";
  });
  on("progress", (event) => {
    const payload = event.payload;
    set("job-phase", payload.phase);
    set("job-iteration", String(payload.iteration));
    document.getElementById("job-bar").value = payload.iteration;
    if (start && start.iteration === null) {
      start.iteration = payload.iteration;
    }
  });
  on("iteration", (event) => {
    const payload = event.payload;
    set("job-iteration", String(payload.iteration));
    set("job-epsilon", payload.epsilon_spent.toPrecision(4).replace(/\.?0+$/, ""));
    document.getElementById("job-bar").value = payload.iteration;
    if (start && start.iteration !== null && payload.iteration > start.iteration) {
      const per = (Date.parse(event.created_at) - start.at) / 1000 /
        (payload.iteration - start.iteration);
      const left = total - payload.iteration;
      set("job-eta", left > 0 ? `about ${seconds(per * left)} more` : "publishing");
    }
  });
  on("finished", (event) => {
    source.close();
    set("job-status", event.payload.status);
    set("job-eta", "done");
    // The results (samples, curves, report) are on the page of a finished job.
    window.location.reload();
  });
})();

// The upload form: held-out data has no budget and no users, so choosing it turns those
// fields off (a disabled field is not sent; the API refuses them for held-out data).
(function () {
  const role = document.querySelector("select[name=role]");
  if (!role) {
    return;
  }
  const budgetFields = ["epsilon_cap", "delta_cap", "user_column"].map((name) =>
    role.form.querySelector(`input[name=${name}]`),
  );
  const follow = () => {
    const heldout = role.value === "heldout";
    for (const input of budgetFields) {
      if (input) {
        input.disabled = heldout;
      }
    }
  };
  role.addEventListener("change", follow);
  follow();
})();
