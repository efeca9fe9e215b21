// memosys memory viewer: a plain page over the REST API (/api/v1, docs/ui.md).
// Every value from the server is rendered with textContent, never as HTML.
"use strict";
(function () {
  const API = "/api/v1";
  const PAGE = 50;
  const STATES = ["active", "archived", "superseded", "invalidated", "deleted"];
  const TYPES = ["fact", "preference", "event", "rule", "persona", "episode", "document", "skill", "tool_call", "trajectory"];
  const $ = (id) => document.getElementById(id);
  const state = { cube: null, cubes: [], offset: 0, nextOffset: null, memory: null, history: [] };

  // --- API -------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  function apiKey() { return localStorage.getItem("memosys.apiKey") || ""; }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const key = apiKey();
    if (key) headers.Authorization = "Bearer " + key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path.startsWith("/") ? path : API + "/" + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!res.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(res.status, err.code || "http_" + res.status, err.message || text || res.statusText);
    }
    return data;
  }

  // The list endpoints answer {"items": [...]} (or a bare list); accept both.
  function listOf(data, ...keys) {
    if (Array.isArray(data)) return data;
    for (const k of ["items", ...keys]) if (data && Array.isArray(data[k])) return data[k];
    return [];
  }

  // Every page of a paginated list ({"items", "next_offset"}), e.g. a long history.
  async function allPages(path, limit = 500) {
    const out = [];
    let offset = 0;
    while (offset !== null && offset !== undefined) {
      const sep = path.includes("?") ? "&" : "?";
      const data = await api("GET", `${path}${sep}limit=${limit}&offset=${offset}`);
      out.push(...listOf(data));
      offset = Array.isArray(data) ? null : data.next_offset;
    }
    return out;
  }

  // --- small DOM helpers -----------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function clear(node) { node.replaceChildren(); return node; }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 19);
  }

  function labels(item) {
    return (item.sensitivity || []).map((s) => el("span", { class: "badge sens", title: "sensitive: " + s, text: s }));
  }

  function tags(item) { return (item.tags || []).map((t) => el("span", { class: "badge tag", text: t })); }

  let statusTimer = null;
  function status(message, kind) {
    const node = $("status");
    node.textContent = message;
    node.className = kind || "";
    clearTimeout(statusTimer);
    if (kind !== "error") statusTimer = setTimeout(() => { node.textContent = ""; }, 4000);
  }

  async function guarded(work) {
    try { return await work(); } catch (err) {
      const msg = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
      status(msg, "error");
      if (err instanceof ApiError && err.status === 401) $("api-key").focus();
      return undefined;
    }
  }

  // --- cubes -----------------------------------------------------------------------
  async function loadCubes() {
    const data = await api("GET", "cubes");
    state.cubes = listOf(data, "cubes");
    const list = clear($("cube-list"));
    for (const c of state.cubes) {
      list.append(el("li", {},
        el("button", {
          type: "button", class: c.id === (state.cube && state.cube.id) ? "cube active" : "cube",
          "data-cube": c.name, onclick: () => selectCube(c),
        }, el("span", { class: "name", text: c.name }),
        el("span", { class: "muted", text: c.owner ? "owner " + c.owner : "" }))));
    }
    if (!state.cubes.length) list.append(el("li", { class: "muted", text: "no cubes yet" }));
    if (!state.cube && state.cubes.length) await selectCube(state.cubes[0]);
  }

  async function selectCube(cube) {
    state.cube = cube;
    state.offset = 0;
    for (const b of document.querySelectorAll("#cube-list .cube")) {
      b.classList.toggle("active", b.dataset.cube === cube.name);
    }
    await loadMemories();
    if (currentTab() === "audit") await loadAudit();
    if (ui.views[currentTab()]) await ui.views[currentTab()].load();
  }

  // --- memories list ---------------------------------------------------------------
  async function loadMemories() {
    if (!state.cube) return;
    const cube = encodeURIComponent(state.cube.name);
    const states = $("state-filter").value === "all" ? STATES : ["active"];
    const filter = states.map((s) => "&state=" + s).join("");
    const data = await api("GET", `cubes/${cube}/memories?limit=${PAGE}&offset=${state.offset}${filter}`);
    const items = listOf(data, "memories");
    state.nextOffset = data && data.next_offset !== undefined ? data.next_offset
      : (items.length === PAGE ? state.offset + PAGE : null);
    $("memories-title").textContent = `Cube ${state.cube.name}`;
    $("page-info").textContent = items.length ? `${state.offset + 1}–${state.offset + items.length}` : "empty";
    $("page-prev").disabled = state.offset === 0;
    $("page-next").disabled = state.nextOffset === null;
    const rows = clear($("memory-rows"));
    for (const item of items) rows.append(memoryRow(item));
  }

  function memoryRow(item) {
    return el("tr", { class: "clickable state-" + item.state, "data-id": item.id, onclick: () => openMemory(item.id) },
      el("td", { text: item.memory_type }),
      el("td", { class: "text", text: item.text }),
      el("td", {}, tags(item)),
      el("td", {}, labels(item)),
      el("td", { text: String(item.version) }),
      el("td", { text: item.state }));
  }

  // --- search ----------------------------------------------------------------------
  async function search(event) {
    event.preventDefault();
    const query = $("search-query").value.trim();
    if (!query) return;
    const body = { query, top_k: Number($("search-k").value) || 10 };
    if (!$("search-all").checked && state.cube) body.cube_ids = [state.cube.id];
    const data = await api("POST", "search", body);
    const hits = listOf(data, "hits");
    const list = clear($("search-results"));
    const top = hits.length ? Math.max(...hits.map((h) => h.score)) || 1 : 1;
    for (const hit of hits) list.append(hitNode(hit, top));
    if (!hits.length) list.append(el("li", { class: "muted", text: "no matches" }));
  }

  function hitNode(hit, top) {
    const item = hit.item, p = hit.provenance || {};
    const ranks = Object.entries(hit.ranks || {}).map(([k, v]) => `${k} #${v}`).join(" · ");
    const prov = [
      ["cube", cubeName(p.cube_id || item.cube_id)], ["v", p.version], ["user", p.user],
      ["agent", p.agent], ["session", p.session], ["document", p.document_uri],
      ["messages", (p.message_ids || []).join(", ")], ["derived from", (p.derived_from || []).join(", ")],
    ].filter(([, v]) => v !== undefined && v !== null && v !== "");
    return el("li", { class: "hit clickable", "data-id": item.id, onclick: () => openMemory(item.id) },
      el("div", { class: "score" },
        el("meter", { min: "0", max: String(top), value: String(hit.score), title: String(hit.score) }),
        el("span", { class: "num", text: hit.score.toFixed(4) }),
        el("span", { class: "muted", text: ranks })),
      el("div", { class: "text", text: item.text }),
      el("div", { class: "meta" },
        el("span", { class: "badge type", text: item.memory_type }), tags(item), labels(item),
        prov.map(([k, v]) => el("span", { class: "prov" }, el("b", { text: k + " " }), String(v)))));
  }

  function cubeName(id) {
    const c = state.cubes.find((x) => x.id === id);
    return c ? c.name : id;
  }

  // --- one memory: header, edit, delete, history, diff, rollback -----------------------
  async function openMemory(id) {
    const [item, history] = await Promise.all([
      api("GET", `memories/${encodeURIComponent(id)}`),
      allPages(`memories/${encodeURIComponent(id)}/history`),
    ]);
    state.memory = item;
    state.history = history.map((r) => {
      const it = r.item || r;
      return { version: r.version ?? it.version, op: r.op || "", at: r.at || it.updated_at, item: it };
    });
    renderDetail();
    $("detail").hidden = false;
    if (location.hash !== "#memory/" + id) history_replace("#memory/" + id);
  }

  function history_replace(hash) { window.history.replaceState(null, "", hash); }

  function renderDetail() {
    const item = state.memory;
    const src = item.source || {};
    const fields = [
      ["id", item.id], ["cube", cubeName(item.cube_id)], ["type", item.memory_type],
      ["state", item.state], ["version", item.version], ["owner", item.owner],
      ["visibility", item.visibility], ["created", when(item.created_at)],
      ["updated", when(item.updated_at)], ["valid", [when(item.valid_from), when(item.valid_to)].filter(Boolean).join(" → ")],
      ["source", Object.entries(src).filter(([, v]) => v && (!Array.isArray(v) || v.length))
        .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : v}`).join("  ")],
      ["stats", item.stats ? `accessed ${item.stats.access_count}× · used ${item.stats.used_in_answer_count}× · feedback ${item.stats.feedback_score}` : ""],
    ];
    const dl = clear($("detail-header"));
    for (const [k, v] of fields) {
      if (v === undefined || v === null || v === "") continue;
      dl.append(el("dt", { text: k }), el("dd", { "data-field": k, text: String(v) }));
    }
    dl.append(el("dt", { text: "labels" }), el("dd", { "data-field": "labels" },
      item.sensitivity && item.sensitivity.length ? labels(item) : el("span", { class: "muted", text: "none" }),
      " ", tags(item)));

    $("edit-text").value = item.text;
    $("edit-tags").value = (item.tags || []).join(", ");
    const sel = clear($("edit-type"));
    for (const t of TYPES) sel.append(el("option", { value: t, text: t, selected: t === item.memory_type }));
    $("delete-btn").disabled = item.state === "deleted";

    const rows = clear($("history-rows"));
    const versions = state.history;
    versions.forEach((r, i) => {
      const prev = versions[i - 1];
      rows.append(el("tr", { "data-version": String(r.version), class: r.version === item.version ? "current" : "" },
        el("td", { text: String(r.version) }),
        el("td", { text: r.op }),
        el("td", { text: when(r.at) }),
        el("td", { text: r.item.state }),
        el("td", { class: "text", text: r.item.text }),
        el("td", {}, prev ? el("button", { type: "button", class: "link", onclick: () => showDiff(prev, r), text: `${prev.version}→${r.version}` }) : ""),
        el("td", {}, r.version === item.version ? el("span", { class: "muted", text: "current" })
          : el("button", { type: "button", class: "rollback", onclick: () => rollback(r.version), text: "Roll back" }))));
    });
    // Open on the latest change: what most people want to see first.
    if (versions.length > 1) showDiff(versions[versions.length - 2], versions[versions.length - 1]);
    else $("diff").hidden = true;
  }

  function showDiff(a, b) {
    const box = clear($("diff"));
    box.hidden = false;
    box.append(el("div", { class: "muted", text: `version ${a.version} → ${b.version} (${b.op})` }));
    const changed = [];
    for (const f of ["memory_type", "state", "visibility", "owner"]) {
      if (a.item[f] !== b.item[f]) changed.push(`${f}: ${a.item[f]} → ${b.item[f]}`);
    }
    for (const f of ["tags", "sensitivity"]) {
      const x = (a.item[f] || []).join(", "), y = (b.item[f] || []).join(", ");
      if (x !== y) changed.push(`${f}: [${x}] → [${y}]`);
    }
    if (changed.length) box.append(el("ul", { class: "fields" }, changed.map((c) => el("li", { text: c }))));
    const text = el("p", { class: "difftext" });
    for (const part of window.memosysDiff(a.item.text, b.item.text)) {
      text.append(part.op === "eq" ? document.createTextNode(part.text) : el(part.op, { text: part.text }));
    }
    box.append(text);
  }

  async function save(event) {
    event.preventDefault();
    const item = state.memory;
    const changes = {};
    const text = $("edit-text").value;
    const tagList = $("edit-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
    if (text !== item.text) changes.text = text;
    if ($("edit-type").value !== item.memory_type) changes.memory_type = $("edit-type").value;
    if (tagList.join(",") !== (item.tags || []).join(",")) changes.tags = tagList;
    if (!Object.keys(changes).length) { status("nothing changed"); return; }
    // expected_version: someone else's edit in between is a conflict, never overwritten.
    const updated = await api("PATCH", `memories/${encodeURIComponent(item.id)}`, { ...changes, expected_version: item.version });
    status(`saved version ${updated.version}`);
    await refreshAfterChange(item.id);
  }

  async function remove() {
    const item = state.memory;
    if (!window.confirm("Delete this memory? (It can be restored by rolling back.)")) return;
    await api("DELETE", `memories/${encodeURIComponent(item.id)}`);
    status("deleted");
    await refreshAfterChange(item.id);
  }

  async function rollback(version) {
    const id = state.memory.id;
    const item = await api("POST", `memories/${encodeURIComponent(id)}/rollback`, { version });
    status(`rolled back to version ${version}: now version ${item.version}`);
    await refreshAfterChange(id);
  }

  async function refreshAfterChange(id) {
    await openMemory(id);
    await loadMemories();
    if (currentTab() === "audit") await loadAudit();
  }

  // --- audit trail ------------------------------------------------------------------
  // An entry: {seq, at, actor, agent, key_id, op, outcome, cube_id, items: [[id, version]],
  // detail, prev_hash, hash} (hash-chained; detail never holds memory text).
  const AUDIT_COLUMNS = ["seq", "at", "actor", "agent", "op", "outcome", "cube_id", "items", "detail"];

  async function loadAudit() {
    const cubeOnly = $("audit-cube-only").checked && state.cube;
    const query = cubeOnly ? `?cube=${encodeURIComponent(state.cube.id)}&limit=200` : "?limit=200";
    const entries = listOf(await api("GET", "audit" + query), "entries");
    clear($("audit-head")).append(el("tr", {}, AUDIT_COLUMNS.map((c) => el("th", { text: c === "cube_id" ? "cube" : c }))));
    const rows = clear($("audit-rows"));
    for (const e of entries) {
      rows.append(el("tr", { class: "outcome-" + (e.outcome || "ok"), title: e.hash ? "hash " + e.hash : null },
        AUDIT_COLUMNS.map((c) => c === "items" ? el("td", {}, auditItems(e.items || []))
          : el("td", { class: c === "detail" ? "text" : "", text: c === "cube_id" ? cubeName(e[c]) || "" : cell(c, e[c]) }))));
    }
    if (!entries.length) rows.append(el("tr", {}, el("td", { class: "muted", colspan: "9", text: "no entries" })));
  }

  function auditItems(items) {
    const shown = items.slice(0, 5).map(([id, version]) => el("button", {
      type: "button", class: "link mono", title: id, onclick: () => guarded(() => openMemory(id)),
      text: `${String(id).slice(-8)} v${version}`,
    }));
    if (items.length > 5) shown.push(el("span", { class: "muted", text: ` +${items.length - 5}` }));
    return shown.flatMap((n, i) => (i ? [" ", n] : [n]));
  }

  function cell(key, value) {
    if (value === null || value === undefined) return "";
    if (key === "at" || key.endsWith("_at")) return when(value);
    if (typeof value === "object") return Object.keys(value).length ? JSON.stringify(value) : "";
    return String(value);
  }

  // --- scheduler decisions --------------------------------------------------------------
  // A record (MemScheduler.recent_decisions): {id, at, query, cube_ids, model, decisions:
  // [{memory_id, cube_id, version, memory_type, form, section, reason, tokens, score}],
  // activation, events, prompt_tokens, cached_tokens}.
  const texts = new Map();

  async function loadDecisions() {
    const records = listOf(await api("GET", "scheduler/decisions?limit=20"), "decisions", "records");
    const box = clear($("decisions"));
    if (!records.length) box.append(el("p", { class: "muted", text: "no answers yet" }));
    // The memories' texts, fetched once each (a deleted or unreadable one shows its id).
    const ids = [...new Set(records.flatMap((r) => (r.decisions || []).map((d) => d.memory_id)))]
      .filter((id) => id && !texts.has(id)).slice(0, 100);
    await Promise.all(ids.map((id) => api("GET", `memories/${encodeURIComponent(id)}`)
      .then((m) => texts.set(id, m.text), () => texts.set(id, null))));
    for (const r of records) box.append(decisionNode(r));
  }

  function decisionNode(r) {
    const facts = [
      ["model", r.model], ["cubes", (r.cube_ids || []).map(cubeName).join(", ")],
      ["prompt tokens", r.prompt_tokens], ["from cache", r.cached_tokens || ""],
      ["activation", r.activation ? `${r.activation.tokens || "?"} tokens from ${r.activation.source || "cache"}` : ""],
      ["events", (r.events || []).join("; ")],
    ].filter(([, v]) => v !== undefined && v !== null && v !== "");
    const decisions = r.decisions || [];
    return el("article", { class: "decision", "data-id": r.id },
      el("header", {}, el("strong", { text: r.query || "answer" }), el("span", { class: "muted", text: "  " + when(r.at) })),
      el("dl", { class: "header" }, facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })])),
      el("table", { class: "list chosen" },
        el("thead", {}, el("tr", {}, ["form", "section", "memory", "v", "score", "tokens", "why"].map((h) => el("th", { text: h })))),
        el("tbody", {}, decisions.map((d) => {
          const text = texts.get(d.memory_id);
          return el("tr", { class: "form-" + d.form },
            el("td", {}, el("span", { class: "badge form", text: d.form })),
            el("td", { text: d.section || "" }),
            el("td", { class: "text" }, el("button", { type: "button", class: "link", onclick: () => guarded(() => openMemory(d.memory_id)),
              text: text || d.memory_id + (text === null ? " (gone)" : "") })),
            el("td", { text: d.version !== undefined ? String(d.version) : "" }),
            el("td", { text: d.score !== undefined && d.score !== null ? Number(d.score).toFixed(3) : "" }),
            el("td", { text: d.tokens ? String(d.tokens) : "" }),
            el("td", { class: "muted", text: d.reason || "" }));
        }))));
  }

  // --- tabs, key, boot --------------------------------------------------------------------
  function currentTab() {
    const b = document.querySelector('.tabs [aria-selected="true"]');
    return b ? b.dataset.tab : "memories";
  }

  async function showTab(name) {
    for (const b of document.querySelectorAll(".tabs [role=tab]")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
    for (const v of document.querySelectorAll(".view")) v.hidden = v.dataset.view !== name;
    if (name === "audit") await loadAudit();
    if (name === "scheduler") await loadDecisions();
    if (ui.views[name]) await ui.views[name].load();
    if (name === "search") $("search-query").focus();
  }

  // A new key is a new identity: drop everything the previous one was shown.
  function resetViews() {
    Object.assign(state, { cube: null, cubes: [], offset: 0, nextOffset: null, memory: null, history: [] });
    texts.clear();
    for (const id of ["cube-list", "memory-rows", "search-results", "audit-rows", "decisions", "history-rows"]) clear($(id));
    $("detail").hidden = true;
    $("memories-title").textContent = "Select a cube";
    for (const v of Object.values(ui.views)) v.reset();
  }

  // Views in other files (graph.js: graph and topics) register in ui.views and use these.
  const ui = window.memosysUI = window.memosysUI || { views: {} };
  Object.assign(ui, { api, el, clear, when, guarded, status, openMemory, showTab,
                      cube: () => state.cube });

  function on(id, event, fn) { $(id).addEventListener(event, (e) => guarded(() => fn(e))); }

  function boot() {
    $("api-key").value = apiKey();
    on("key-form", "submit", async (e) => {
      e.preventDefault();
      localStorage.setItem("memosys.apiKey", $("api-key").value.trim());
      resetViews();
      await loadCubes();
      status("key saved in this browser");
    });
    on("key-clear", "click", async () => {
      localStorage.removeItem("memosys.apiKey");
      $("api-key").value = "";
      resetViews();
      status("key forgotten");
    });
    on("cubes-reload", "click", loadCubes);
    on("page-prev", "click", () => { state.offset = Math.max(0, state.offset - PAGE); return loadMemories(); });
    on("state-filter", "change", () => { state.offset = 0; return loadMemories(); });
    on("page-next", "click", () => { state.offset = state.nextOffset ?? state.offset; return loadMemories(); });
    on("search-form", "submit", search);
    on("edit-form", "submit", save);
    on("delete-btn", "click", remove);
    on("detail-close", "click", async () => { $("detail").hidden = true; history_replace("#"); });
    on("audit-reload", "click", loadAudit);
    on("audit-cube-only", "change", loadAudit);
    on("scheduler-reload", "click", loadDecisions);
    for (const b of document.querySelectorAll(".tabs [role=tab]")) b.addEventListener("click", () => guarded(() => showTab(b.dataset.tab)));
    guarded(async () => {
      await loadCubes();
      const m = location.hash.match(/^#memory\/(.+)$/);
      if (m) await openMemory(decodeURIComponent(m[1]));
    }).finally(() => { document.body.dataset.ready = "true"; });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
