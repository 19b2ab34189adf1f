// The embedsearch page: plain JavaScript over the /v1 API. Its state (index, query, where, paging) is the URL.
// Everything an index holds (labels, paths, names) is shown through textContent and DOM properties, never innerHTML
// or markup built from strings, and goes into URLs through encodeURIComponent.
"use strict";
const $ = (id) => document.getElementById(id);
const PAGE = 24;
let upload = null; // the last uploaded image (File): not in the URL

function state() {
  const p = new URLSearchParams(location.search);
  return {index: p.get("index") || "", id: p.get("id") || "", text: p.get("text") || "",
          where: p.get("where") || "", offset: Math.max(0, parseInt(p.get("offset") || "0", 10) || 0)};
}

function go(changes, push = true) {
  const s = Object.assign(state(), changes);
  const p = new URLSearchParams();
  for (const k of ["index", "id", "text", "where", "offset"]) if (s[k] !== "" && s[k] !== 0) p.set(k, s[k]);
  const url = "/?" + p.toString();
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
  render();
}

async function api(path, options) {
  const o = Object.assign({credentials: "same-origin"}, options || {});
  o.headers = Object.assign({"X-Embedsearch": "1"}, o.headers || {});  // the server refuses a POST without it
  const r = await fetch(path, o);
  let body;
  try {  // item ids are int64 (hashes of paths): kept as their exact digits, beyond a JS number's 2^53
    body = JSON.parse(await r.text(), (k, v, ctx) => (k === "id" && typeof v === "number" && ctx && ctx.source)
      ? ctx.source : v);
  } catch (e) { body = {error: `HTTP ${r.status}`}; }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

const enc = encodeURIComponent;
const thumb = (ix, id, size = 120) => `/v1/indexes/${enc(ix)}/items/${enc(id)}/thumbnail?size=${size}`;
let imagesServed = true;  // false when the server may not read this index's images (see describe)

function picture(ix, id, size) {  // the thumbnail, or a text placeholder when the server serves none
  if (!imagesServed) return text("div", "no image", "noimage muted");
  const img = document.createElement("img");
  img.src = thumb(ix, id, size);
  img.alt = `item ${id}`;
  img.loading = "lazy";
  return img;
}

function text(tag, content, cls) {
  const e = document.createElement(tag);
  e.textContent = content;
  if (cls) e.className = cls;
  return e;
}

function card(ix, hit) {
  const c = document.createElement("div");
  c.className = "card";
  c.dataset.id = hit.id;
  c.append(picture(ix, hit.id), text("div", `${hit.label ?? "—"} · ${hit.split ?? "—"}`),
           text("div", (hit.score !== undefined ? `${hit.score.toFixed(4)} · ` : "") + `id ${hit.id}`, "muted"));
  c.title = hit.path || `item ${hit.id}`;
  c.addEventListener("click", () => { upload = null; go({id: String(hit.id), text: "", offset: 0}); });
  return c;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

async function loadIndexes(s) {
  const {indexes} = await api("/v1/indexes");
  const sel = $("index");
  sel.replaceChildren(...indexes.map((x) => { const o = text("option", x.name); o.value = x.name; return o; }));
  if (!indexes.length) throw new Error("no index is served");
  const name = indexes.some((x) => x.name === s.index) ? s.index : indexes[0].name;
  sel.value = name;
  return name;
}

async function describe(name) {
  const d = await api(`/v1/indexes/${enc(name)}`);
  imagesServed = !(d.images && d.images.served === false);
  $("info").textContent = `${d.backbone.spec || ""} · ${d.dim}-d · ${d.faiss ? d.faiss.ntotal : 0} items · ` +
    `splits: ${d.splits.join(", ") || "—"} · ${d.classes.length} classes` +
    (imagesServed ? "" : ` · no images: ${d.images.why || "not served"}`);
  $("reports").replaceChildren(...d.reports.map((f) => {
    const a = text("a", f);
    a.href = `/v1/indexes/${enc(name)}/reports/${enc(f)}`;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }));
  $("text").disabled = !d.text;
  return d;
}

function showItem(name, item) {
  const sec = $("item");
  if (!item) { sec.hidden = true; sec.replaceChildren(); return; }
  const img = picture(name, item.id, 224);
  const table = document.createElement("table");
  for (const [k, v] of Object.entries(item)) {
    const tr = document.createElement("tr");
    tr.append(text("th", k), text("td", v === null ? "—" : String(v)));
    table.append(tr);
  }
  sec.replaceChildren(img, table);
  sec.hidden = false;
}

function pager(offset, count, hasMore, onPage) {
  $("pos").textContent = count ? `${offset + 1}–${offset + count}` : "";
  $("prev").disabled = offset === 0;
  $("next").disabled = !hasMore;
  $("prev").onclick = () => onPage(Math.max(0, offset - PAGE));
  $("next").onclick = () => onPage(offset + PAGE);
}

function showHits(name, title, result, offset, onPage) {
  $("title").textContent = title;
  const hits = result.hits;
  $("grid").replaceChildren(...hits.map((h) => card(name, h)));
  pager(offset, hits.length, result.has_more, onPage);
}

async function render() {
  document.body.dataset.state = "loading";
  showError("");
  const s = state();
  try {
    const name = await loadIndexes(s);
    await describe(name);
    $("id").value = s.id; $("text").value = s.text; $("where").value = s.where;
    const common = `k=${PAGE}&offset=${s.offset}` + (s.where ? `&where=${enc(s.where)}` : "");
    const onPage = (o) => go({offset: o});
    if (upload) {
      const form = new FormData();
      form.append("image", upload);
      form.append("k", PAGE); form.append("offset", s.offset);
      if (s.where) form.append("where", s.where);
      const r = await api(`/v1/indexes/${enc(name)}/search/image`, {method: "POST", body: form});
      showItem(name, null);
      showHits(name, `Like ${upload.name}`, r.results[0], s.offset, (o) => go({offset: o}));
    } else if (s.id !== "") {
      const [it, r] = await Promise.all([api(`/v1/indexes/${enc(name)}/items/${enc(s.id)}`),
                                         api(`/v1/indexes/${enc(name)}/search?id=${enc(s.id)}&${common}`)]);
      showItem(name, it.item);
      showHits(name, `More like item ${s.id}`, r.results[0], s.offset, onPage);
    } else if (s.text !== "") {
      const r = await api(`/v1/indexes/${enc(name)}/search?text=${enc(s.text)}&${common}`);
      showItem(name, null);
      showHits(name, `Text: “${s.text}”`, r.results[0], s.offset, onPage);
    } else {
      const r = await api(`/v1/indexes/${enc(name)}/items?limit=${PAGE}&${common.replace(/^k=\d+&/, "")}`);
      showItem(name, null);
      showHits(name, s.where ? `Items where ${s.where}` : "Items (click one for more like it)",
               {hits: r.items, has_more: r.has_more}, s.offset, onPage);
    }
    await Promise.all([...document.images].map((im) => im.decode().catch(() => null)));
    document.body.dataset.state = "ready";
  } catch (e) {
    showError(e.message);
    document.body.dataset.state = "error";
  }
}

$("index").addEventListener("change", () => { upload = null; go({index: $("index").value, id: "", text: "", offset: 0}); });
$("query").addEventListener("submit", (ev) => {
  ev.preventDefault();
  upload = null;
  go({id: $("id").value.trim(), text: $("id").value.trim() ? "" : $("text").value.trim(),
      where: $("where").value.trim(), offset: 0});
});
$("file").addEventListener("change", () => { if ($("file").files[0]) { upload = $("file").files[0]; go({id: "", text: "", offset: 0}); } });
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  if (ev.dataTransfer.files[0]) { upload = ev.dataTransfer.files[0]; go({id: "", text: "", offset: 0}); }
});
window.addEventListener("popstate", () => { upload = null; render(); });
render();
