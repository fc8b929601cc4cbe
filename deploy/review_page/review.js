// The review page of `deploy review` (deploy/review_app.py). Plain JavaScript, no library, no build step.
// Every string from the line (part ids, class names, inspector names) is written with textContent, never as HTML.
"use strict";

(function () {
  const state = {
    classes: [], parts: [], summary: null, index: 0, inspector: "", key: "", auth: false,
    history: [],  // [{key, previous}] labels given in this tab, for undo
    chain: Promise.resolve(), pending: 0, urls: [],
  };
  const $ = (id) => document.getElementById(id);
  const REFRESH_MS = 5000;  // how often a page catches up with the labels other inspectors give

  function setStatus(text, isError) {
    $("status").textContent = text || "";
    $("status").className = isError ? "error" : "";
  }

  async function api(path, options) {
    const headers = Object.assign({}, (options && options.headers) || {});
    if (state.key) headers["Authorization"] = "Bearer " + state.key;
    const response = await fetch(path, Object.assign({}, options || {}, { headers: headers, cache: "no-store" }));
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { const body = await response.json(); message = body.message || message; } catch (e) { /* not JSON */ }
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return response;
  }

  async function loadQueue() {
    const data = await (await api("api/queue")).json();
    state.classes = data.classes;
    state.parts = data.parts;
    state.summary = data.summary;
  }

  function mergeLabels(labels) {  // {key: [label, inspector]}: every label given so far, by anyone
    for (const part of state.parts) {
      const given = labels[part.key];
      part.label = given ? given[0] : "";
      part.labelled_by = given ? given[1] : "";
    }
  }

  function nextOpen(from, includeFrom) {
    const n = state.parts.length;
    for (let step = includeFrom ? 0 : 1; step <= n; step++) {
      const i = (from + step) % n;
      if (!state.parts[i].label) return i;
    }
    return -1;
  }

  function drawClasses() {
    const box = $("classes");
    box.replaceChildren();
    state.classes.forEach((name, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.cls = name;
      button.textContent = (i + 1) + "  " + name;
      button.addEventListener("click", () => enqueue(() => giveLabel(name)));
      box.appendChild(button);
    });
  }

  function drawCounts() {
    const s = state.summary;
    const done = state.parts.filter((p) => p.label).length;
    $("progress").textContent = done + " of " + state.parts.length + " labelled, " + (state.parts.length - done) + " to go";
    $("progress-bar").max = Math.max(1, state.parts.length);
    $("progress-bar").value = done;
    const counts = $("counts");
    counts.replaceChildren();
    for (const name of state.classes) {
      const span = document.createElement("span");
      span.textContent = name + ": " + state.parts.filter((p) => p.label === name).length;
      counts.appendChild(span);
    }
    if (s && s.by_inspector && Object.keys(s.by_inspector).length) {
      const span = document.createElement("span");
      span.textContent = "by inspector: " + Object.entries(s.by_inspector).map((e) => e[0] + " " + e[1]).join(", ");
      counts.appendChild(span);
    }
    $("done").hidden = done < state.parts.length;
  }

  async function showPicture(img, part, kind) {
    img.removeAttribute("src");
    if (kind === "overlay" && !part.has_overlay) return;
    try {
      const blob = await (await api("api/image?part=" + encodeURIComponent(part.key) + "&kind=" + kind)).blob();
      if (state.parts[state.index] !== part) return;  // the inspector moved on meanwhile
      const url = URL.createObjectURL(blob);
      state.urls.push(url);
      img.src = url;
    } catch (e) {
      setStatus("the " + kind + " of this part cannot be shown: " + e.message, true);
    }
  }

  function drawPart() {
    for (const url of state.urls.splice(0)) URL.revokeObjectURL(url);
    drawCounts();
    if (!state.parts.length) {
      $("part").hidden = true;
      setStatus("This queue is empty.");
      return;
    }
    const part = state.parts[state.index];
    $("part").hidden = false;
    $("part-id").textContent = part.part_id || part.key;
    $("position").textContent = (state.index + 1) + " of " + state.parts.length;
    $("model-label").textContent = part.model_label;
    $("model-confidence").textContent = part.confidence === null ? "" : part.confidence.toFixed(3);
    $("model-action").textContent = part.action ? "(" + part.action + ")" : "";
    $("reason").textContent = part.reason.replace(/_/g, " ");
    $("part-time").textContent = part.time;
    $("current-label").textContent = part.label || "not labelled yet";
    $("labelled-by").textContent = part.label && part.labelled_by ? "by " + part.labelled_by : "";
    $("overlay-figure").hidden = !part.has_overlay;
    for (const button of $("classes").children) {
      button.classList.toggle("model", button.dataset.cls === part.model_label);
      button.title = button.dataset.cls === part.model_label ? "the model's label (a agrees with it)" : "";
      button.classList.toggle("chosen", button.dataset.cls === part.label);
    }
    document.body.dataset.part = part.key;
    showPicture($("image"), part, "image");
    showPicture($("overlay"), part, "overlay");
  }

  async function post(part, label) {
    const response = await api("api/labels", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ part: part.key, label: label, inspector: state.inspector }),
    });
    const data = await response.json();
    state.summary = data.summary;
    mergeLabels(data.labels);
  }

  async function giveLabel(label) {
    const part = state.parts[state.index];
    if (!part) return;
    const previous = part.label;
    await post(part, label);
    state.history.push({ key: part.key, previous: previous });
    setStatus("labelled " + (part.part_id || part.key) + " as " + label);
    const next = nextOpen(state.index, false);
    if (next >= 0) state.index = next;
    drawPart();
  }

  async function undo() {
    const last = state.history.pop();
    if (!last) { setStatus("nothing to undo"); return; }
    const i = state.parts.findIndex((p) => p.key === last.key);
    if (i < 0) return;
    await post(state.parts[i], last.previous);
    state.index = i;
    setStatus("undone: " + (state.parts[i].part_id || last.key) + (last.previous ? " is " + last.previous + " again" : " has no label again"));
    drawPart();
  }

  function move(step, openOnly) {
    if (!state.parts.length) return;
    if (openOnly) {
      const next = nextOpen(state.index, false);
      state.index = next >= 0 ? next : (state.index + 1) % state.parts.length;
    } else {
      state.index = (state.index + step + state.parts.length) % state.parts.length;
    }
    drawPart();
  }

  // Actions run one after another, in the order the keys were pressed: a fast inspector loses no key.
  function enqueue(action) {
    state.pending += 1;
    document.body.dataset.pending = String(state.pending);
    state.chain = state.chain.then(action).catch((e) => {
      setStatus((e.status === 401 || e.status === 403 ? "not allowed: " : "not saved: ") + e.message, true);
    }).finally(() => {
      state.pending -= 1;
      document.body.dataset.pending = String(state.pending);
    });
  }

  function onKey(event) {
    if (document.body.dataset.state !== "review" || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target && (event.target.tagName === "INPUT" || event.target.tagName === "TEXTAREA")) return;
    const k = event.key;
    if (k >= "1" && k <= "9") {
      const name = state.classes[Number(k) - 1];
      if (name !== undefined) enqueue(() => giveLabel(name));
    } else if (k === "a" || k === "Enter") {
      enqueue(() => {
        const part = state.parts[state.index];
        if (part && state.classes.includes(part.model_label)) return giveLabel(part.model_label);
        setStatus("the model's label is not a class of this queue; press a number", true);
      });
    } else if (k === "u" || k === "Backspace") {
      enqueue(undo);
    } else if (k === "s" || k === " ") {
      enqueue(() => move(1, true));
    } else if (k === "ArrowRight") {
      enqueue(() => move(1, false));
    } else if (k === "ArrowLeft") {
      enqueue(() => move(-1, false));
    } else {
      return;
    }
    event.preventDefault();
  }

  async function begin() {
    try {
      await loadQueue();
    } catch (e) {
      document.body.dataset.state = "start";
      $("start").hidden = false;
      setStatus(e.message, true);
      return;
    }
    $("inspector").textContent = state.inspector;
    $("who").hidden = false;
    $("start").hidden = true;
    $("review").hidden = false;
    drawClasses();
    const first = nextOpen(0, true);
    state.index = first >= 0 ? first : 0;
    document.body.dataset.state = "review";
    setStatus("");
    drawPart();
  }

  async function refresh() {  // labels other inspectors gave meanwhile
    if (document.body.dataset.state !== "review" || state.pending) return;
    try {
      const data = await (await api("api/labels")).json();
      if (state.pending) return;  // a label of ours went out meanwhile: its answer is newer
      state.summary = data.summary;
      mergeLabels(data.labels);
      drawCounts();
      const part = state.parts[state.index];
      if (part) {
        $("current-label").textContent = part.label || "not labelled yet";
        $("labelled-by").textContent = part.label && part.labelled_by ? "by " + part.labelled_by : "";
      }
    } catch (e) { /* the next refresh tries again */ }
  }

  async function init() {
    document.addEventListener("keydown", onKey);
    $("start-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const name = $("inspector-name").value.trim();
      if (!name) { setStatus("enter your name", true); return; }
      state.inspector = name;
      state.key = $("api-key").value.trim();
      localStorage.setItem("review.inspector", name);
      if (state.key) sessionStorage.setItem("review.key", state.key);
      begin();
    });
    $("change-inspector").addEventListener("click", () => {
      document.body.dataset.state = "start";
      $("review").hidden = true;
      $("start").hidden = false;
      $("inspector-name").focus();
    });
    try {
      const config = await (await fetch("api/config", { cache: "no-store" })).json();
      state.auth = config.auth;
      $("queue-name").textContent = config.queue;
    } catch (e) {
      setStatus("the review server does not answer: " + e.message, true);
      return;
    }
    $("key-row").hidden = !state.auth;
    $("inspector-name").value = localStorage.getItem("review.inspector") || "";
    $("api-key").value = sessionStorage.getItem("review.key") || "";
    const known = $("inspector-name").value && (!state.auth || $("api-key").value);
    if (known) {  // a reload: the same inspector goes on where the queue stands
      state.inspector = $("inspector-name").value;
      state.key = $("api-key").value;
      await begin();
    } else {
      document.body.dataset.state = "start";
      $("start").hidden = false;
      $("inspector-name").focus();
    }
    setInterval(refresh, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", init);
}());
