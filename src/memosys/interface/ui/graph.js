// memosys memory viewer: the Graph and Topics views (docs/ui.md, docs/graph.md).
// Loaded before app.js; registers its views in window.memosysUI.views and uses app.js's
// helpers (api, el, guarded, openMemory) at call time. Values render as text only.
"use strict";
(function () {
  const ui = window.memosysUI = window.memosysUI || { views: {} };
  const $ = (id) => document.getElementById(id);
  const q = encodeURIComponent;
  const day = (iso) => (iso ? String(iso).slice(0, 10) : "");
  let entity = null;   // the entity whose page is shown

  function cubePath(rest) {
    const cube = ui.cube();
    return cube ? `cubes/${q(cube.name)}/${rest}` : null;
  }

  function memoryItem(m) {
    return ui.el("li", { class: "clickable", "data-id": m.id, onclick: () => ui.guarded(() => ui.openMemory(m.id)) },
      m.text, " ", ui.el("span", { class: "muted", text: ui.when(m.valid_from || m.created_at) }));
  }

  function entityLink(e) {
    return ui.el("button", { type: "button", class: "link", "data-entity": e.name,
                             onclick: () => ui.guarded(() => openEntity(e.name)) }, e.name);
  }

  // --- graph -----------------------------------------------------------------------
  async function loadEntities() {
    const path = cubePath("entities");
    const list = ui.clear($("entity-list"));
    if (!path) return;
    const params = new URLSearchParams({ limit: "100" });
    if ($("entity-prefix").value.trim()) params.set("prefix", $("entity-prefix").value.trim());
    if ($("entity-type").value) params.set("type", $("entity-type").value);
    const found = await ui.api("GET", `${path}?${params}`);
    for (const e of found) {
      list.append(ui.el("li", { class: entity && entity.id === e.id ? "clickable active" : "clickable",
                                "data-entity": e.name, onclick: () => ui.guarded(() => openEntity(e.name)) },
        e.name, " ", ui.el("span", { class: "badge", text: e.type }),
        ui.el("span", { class: "muted", text: ` ${e.mentions}` })));
    }
    if (!found.length) list.append(ui.el("li", { class: "muted", text: "no entities" }));
  }

  function factRows(facts) {
    const rows = ui.clear($("fact-rows"));
    for (const f of facts) {
      rows.append(ui.el("tr", { class: f.valid_to ? "ended" : "" },
        ui.el("td", {}, entityLink(f.subject)), ui.el("td", { text: f.predicate }),
        ui.el("td", {}, entityLink(f.object)), ui.el("td", { text: day(f.valid_from) }),
        ui.el("td", { text: f.valid_to ? day(f.valid_to) : "now" }),
        ui.el("td", { text: f.confidence.toFixed(2) })));
    }
    if (!facts.length) rows.append(ui.el("tr", {}, ui.el("td", { class: "muted", colspan: "6", text: "no facts" })));
  }

  async function openEntity(name) {
    const path = cubePath("entity");
    if (!path) return;
    const page = await ui.api("GET", `${path}?name=${q(name)}`);
    entity = page.entity;
    $("entity-page").hidden = false;
    $("entity-name").textContent = entity.name;
    $("entity-meta").textContent = `${entity.type} · mentioned by ${entity.mentions} memories`
      + (entity.aliases.length ? ` · also: ${entity.aliases.filter((a) => a !== entity.name).join(", ")}` : "");
    $("entity-as-of").value = "";
    factRows(page.facts);
    const near = ui.clear($("neighbour-list"));
    for (const n of page.neighbours) {
      near.append(ui.el("li", {}, entityLink(n.entity), ui.el("span", { class: "muted", text: ` (${n.via})` })));
    }
    const mems = ui.clear($("entity-memories"));
    for (const m of page.memories) mems.append(memoryItem(m));
    for (const li of document.querySelectorAll("#entity-list li")) li.classList.toggle("active", li.dataset.entity === entity.name);
  }

  async function factsAsOf() {
    if (!entity) return;
    const date = $("entity-as-of").value;
    const params = new URLSearchParams({ name: entity.id });
    if (date) params.set("as_of", date + "T23:59:59Z");
    factRows(await ui.api("GET", `${cubePath("facts")}?${params}`));
  }

  async function findPath() {
    const out = ui.clear($("path-result"));
    const from = $("path-from").value.trim(), to = $("path-to").value.trim();
    if (!from || !to || !cubePath("path")) return;
    const res = await ui.api("GET", `${cubePath("path")}?source=${q(from)}&target=${q(to)}`);
    if (!res.found) { out.append(ui.el("span", { class: "muted", text: "no path within 4 hops" })); return; }
    for (const step of res.steps) {
      if (step.predicate) out.append(ui.el("span", { class: "muted path-step", text: `—${step.predicate}→` }));
      out.append(ui.el("span", { class: "path-step" }, entityLink(step.entity)));
    }
  }

  // --- topics ----------------------------------------------------------------------
  async function loadTopics() {
    const path = cubePath("overview");
    const list = ui.clear($("topic-list"));
    const ents = ui.clear($("overview-entities"));
    if (!path) return;
    const user = $("overview-user").value.trim();
    const overview = await ui.api("GET", user ? `${path}?user=${q(user)}` : path);
    const topics = user ? overview.topics : await ui.api("GET", cubePath("topics"));
    if (overview.entities.length) {
      ents.append("Main entities: ");
      for (const e of overview.entities) {
        ents.append(ui.el("button", { type: "button", class: "link path-step", "data-entity": e.name,
          onclick: () => ui.guarded(async () => { await ui.showTab("graph"); await openEntity(e.name); }) }, e.name));
      }
    }
    for (const t of topics) {
      list.append(ui.el("li", { class: "clickable", "data-topic": t.id, onclick: () => ui.guarded(() => openTopic(t.id)) },
        t.label, ui.el("span", { class: "muted", text: ` ${t.size}` })));
    }
    if (!topics.length) list.append(ui.el("li", { class: "muted", text: "no topics yet" }));
  }

  async function openTopic(id) {
    const res = await ui.api("GET", `topics/${q(id)}`);
    $("topic-page").hidden = false;
    $("topic-label").textContent = res.topic.label;
    $("topic-summary").textContent = res.topic.summary;
    const kw = ui.clear($("topic-keywords"));
    for (const k of res.topic.keywords) kw.append(ui.el("span", { class: "badge tag", text: k }));
    const mems = ui.clear($("topic-memories"));
    for (const m of res.memories) mems.append(memoryItem(m));
    for (const li of document.querySelectorAll("#topic-list li")) li.classList.toggle("active", li.dataset.topic === id);
  }

  // --- registration ----------------------------------------------------------------
  ui.views.graph = {
    load: loadEntities,
    reset() { entity = null; $("entity-page").hidden = true; ui.clear($("entity-list")); ui.clear($("path-result")); },
  };
  ui.views.topics = {
    load: loadTopics,
    reset() { $("topic-page").hidden = true; ui.clear($("topic-list")); ui.clear($("overview-entities")); },
  };

  function bind() {
    const on = (id, event, fn) => $(id).addEventListener(event, (e) => ui.guarded(() => fn(e)));
    on("entity-form", "submit", (e) => { e.preventDefault(); return loadEntities(); });
    on("entity-as-of", "change", factsAsOf);
    on("entity-as-of-clear", "click", () => { $("entity-as-of").value = ""; return factsAsOf(); });
    on("path-find", "click", findPath);
    on("topics-reload", "click", loadTopics);
    on("overview-user", "change", loadTopics);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", bind);
  else bind();
})();
