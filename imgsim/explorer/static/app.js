// imgsim explorer: a static site over an index's data files (see imgsim/explorer/site_format.py).
// Plain JavaScript, no framework and nothing fetched from elsewhere. Every view loads only the
// small files it shows; addresses are #item=ID, #view=collection|map|groups|outliers|upload, so links can be
// shared and the back button walks back.
"use strict";
(() => {
  const S = {
    site: null, cards: new Map(), items: new Map(), groups: new Map(), search: new Map(),
    facetCodes: new Map(), packs: new Map(), thumbs: new Map(), rangeOk: null, probe: null,
    map: null, served: false, token: 0,
  };
  const main = document.getElementById("main");
  const statusLine = document.getElementById("status");
  const GRID_PAGE = 120;
  // The build this page belongs to (b/BUILD/): every data file is read from there, never rewritten.
  const BUILD = (document.querySelector('meta[name="imgsim-build"]') || {}).content || "";
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#e7ba52", "#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d",
    "#31a354", "#756bb1", "#636363"];

  // --- small helpers ---------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const pad = (n) => String(n).padStart(5, "0");
  const isHttp = (u) => typeof u === "string" && /^https?:\/\//i.test(u);
  const itemHref = (id) => "#item=" + encodeURIComponent(id);
  const fmtInt = (n) => Number(n).toLocaleString("en");
  const plural = (n, one, many) => `${fmtInt(n)} ${Number(n) === 1 ? one : many || one + "s"}`;
  // A long path-like id keeps its end (the file name), not its start: "…/IMG_1234.jpg".
  const caption = (text) => {
    const s = String(text);
    const cut = s.lastIndexOf("/", s.length - 2);
    return s.length > 28 && cut > 0 ? "…" + s.slice(cut) : s;
  };
  // A neighbour's strength in this collection's own terms (imgsim.index.strength): the score's
  // percentile among every neighbour score, and a word for it.
  function strengthOf(score) {
    const st = S.site.strength || {};
    const q = st.quantiles || [];
    if (!q.length) return null;
    let p = 100;
    if (score <= q[0]) p = 0;
    else for (let i = 1; i < q.length; i++) {
      if (score <= q[i]) { p = ((i - 1) + (q[i] > q[i - 1] ? (score - q[i - 1]) / (q[i] - q[i - 1]) : 1)) * 100 / (q.length - 1); break; }
    }
    if (st.duplicate !== null && st.duplicate !== undefined && score >= st.duplicate) return { p, label: "near-duplicate" };
    const label = (st.labels || []).find(([floor]) => p >= floor);
    return { p, label: label ? label[1] : "" };
  }
  // Originals come from other hosts: loaded only where the site allows it or the visitor asked.
  const originalsAllowed = () => Boolean(S.site.originals || S.showOriginals);
  function status(text) { statusLine.textContent = text || ""; }

  async function getJSON(path) {
    const r = await fetch(BUILD + path);
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }
  async function getBytes(path) {
    const r = await fetch(BUILD + path);
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.arrayBuffer();
  }
  function cached(map, key, load, limit) {
    if (map.has(key)) { const v = map.get(key); map.delete(key); map.set(key, v); return v; }
    const promise = load().catch((e) => { map.delete(key); throw e; });
    map.set(key, promise);
    if (limit && map.size > limit) map.delete(map.keys().next().value);
    return promise;
  }
  function fnv1a(text) {
    let h = 0x811c9dc5;
    for (const b of new TextEncoder().encode(text)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
    return h >>> 0;
  }

  // --- data --------------------------------------------------------------------------------------
  async function card(row) {
    const size = S.site.cards.rows;
    const shard = Math.floor(row / size);
    const rows = await cached(S.cards, shard, () => getJSON(`data/cards/${pad(shard)}.json`), 400);
    const c = rows[row - shard * size];
    const fields = {};
    S.site.card_fields.forEach((name, i) => { fields[name] = c[3 + i]; });
    return { row, id: c[0], url: c[1], thumb: c[2], fields, title: (S.site.title_field && fields[S.site.title_field]) || c[0] };
  }
  async function item(id) {
    const bucket = fnv1a(id) % S.site.items.buckets;
    const items = await cached(S.items, bucket, () => getJSON(`data/items/${pad(bucket)}.json`), 200);
    return Object.prototype.hasOwnProperty.call(items, id) ? items[id] : null;
  }
  function facetCodes(facet) {
    return cached(S.facetCodes, facet.name, async () => new Uint8Array(await getBytes(facet.file)));
  }
  function searchShard(n) {
    return cached(S.search, n, async () => {
      const r = await fetch(`${BUILD}data/search/${pad(n)}.txt`);
      if (!r.ok) throw new Error(`search shard ${n}: HTTP ${r.status}`);
      return (await r.text()).split("\n");
    }, 64);
  }

  // Thumbnails: one HTTP Range request each where the host supports ranges (GCS, most servers);
  // otherwise the whole pack once, kept for its neighbours (python -m http.server sends whole files).
  function pack(n) { return cached(S.packs, n, () => getBytes(`thumbs/${pad(n)}.bin`), 48); }
  async function thumbBlob(ref) {
    const [n, offset, length] = ref;
    if (S.rangeOk === null && S.probe) await S.probe.catch(() => {});
    if (S.rangeOk !== false) {
      const attempt = (async () => {
        const r = await fetch(`${BUILD}thumbs/${pad(n)}.bin`, { headers: { Range: `bytes=${offset}-${offset + length - 1}` } });
        if (!r.ok) throw new Error(`thumbnail pack ${n}: HTTP ${r.status}`);
        if (r.status === 206) { S.rangeOk = true; return r.arrayBuffer(); }
        S.rangeOk = false;
        const whole = await r.arrayBuffer();
        if (!S.packs.has(n)) S.packs.set(n, Promise.resolve(whole));
        return whole.slice(offset, offset + length);
      })();
      if (S.rangeOk === null && !S.probe) S.probe = attempt;
      return new Blob([await attempt], { type: S.site.thumbs.mime });
    }
    const whole = await pack(n);
    return new Blob([whole.slice(offset, offset + length)], { type: S.site.thumbs.mime });
  }
  function thumbUrl(ref) {
    return cached(S.thumbs, ref.join(","), async () => URL.createObjectURL(await thumbBlob(ref)), 4000);
  }
  // An <img> for an item: its thumbnail, or the original URL where there is none (or it fails);
  // a "no image" placeholder where neither is there (an index built from vectors alone) or loads.
  function noPicture(c, cls) {
    return el("span", { class: `${cls || "thumb"} no-picture`, role: "img", "aria-label": c.title || c.id,
                        dataset: { source: "none" }, text: "no image" });
  }
  function picture(c, cls) {
    if (!c.thumb && !(isHttp(c.url) && originalsAllowed())) return noPicture(c, cls);
    const img = el("img", { class: cls || "thumb", alt: c.title || c.id, loading: "lazy", decoding: "async" });
    const original = () => {
      if (isHttp(c.url) && originalsAllowed() && img.dataset.source !== "url") {
        img.dataset.source = "url";
        img.src = c.url;
      } else {
        img.replaceWith(noPicture(c, cls));
      }
    };
    img.addEventListener("error", original);
    if (c.thumb) {
      img.dataset.source = "thumbnail";
      thumbUrl(c.thumb).then((u) => { img.src = u; }, original);
    } else {
      original();
    }
    return img;
  }
  function cardLink(c, extra) {
    return el("a", { class: "card", href: itemHref(c.id), title: c.title, dataset: { id: c.id, row: c.row } },
      el("span", { class: "frame" }, picture(c)),
      el("span", { class: "caption" }, el("span", { class: "title", text: caption(c.title) }), extra || null));
  }

  // --- selection: search and facets --------------------------------------------------------------
  function readParams() {
    const params = new URLSearchParams(location.hash.slice(1));
    const facets = {};
    for (const [k, v] of params) if (k.startsWith("f.")) (facets[k.slice(2)] ||= []).push(v);
    return { params, q: (params.get("q") || "").trim(), facets };
  }
  function hashFor(q, facets, extra) {
    const p = new URLSearchParams();
    p.set("view", "collection");
    if (q) p.set("q", q);
    for (const [name, values] of Object.entries(facets)) for (const v of values) p.append("f." + name, v);
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    return "#" + p.toString();
  }
  // The selected site rows (an array), or null for the whole collection.
  async function selectRows(q, facets, token) {
    const n = S.site.count;
    const active = S.site.facets.filter((f) => (facets[f.name] || []).length);
    if (!q && !active.length) return null;
    const tests = [];
    for (const f of active) {
      const codes = await facetCodes(f);
      const wanted = new Set(facets[f.name].map((v) => f.values.indexOf(v) + 1));
      tests.push((row) => wanted.has(codes[row]));
    }
    const keep = (row) => tests.every((t) => t(row));
    const rows = [];
    if (!q) {
      for (let row = 0; row < n; row++) if (keep(row)) rows.push(row);
      return rows;
    }
    const tokens = q.toLowerCase().split(/\s+/).filter(Boolean);
    const size = S.site.search.rows;
    for (let shard = 0; shard < S.site.search.shards; shard++) {
      if (token !== S.token) return rows;
      status(`searching… ${Math.round((100 * shard) / S.site.search.shards)}%`);
      const lines = await searchShard(shard);
      for (let i = 0; i < lines.length; i++) {
        const row = shard * size + i;
        if (row >= n) break;
        const line = lines[i];
        if (tokens.every((t) => line.includes(t)) && keep(row)) rows.push(row);
      }
    }
    status("");
    return rows;
  }

  // A cell a spreadsheet shows and never runs: text starting with = + - @ (or a tab or carriage
  // return before one) would be a formula there (OWASP's CSV injection), so it gets a leading '.
  function csvCell(value) {
    let text = value === null || value === undefined ? "" : String(value);
    if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
    return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }
  async function downloadCsv(rows, button) {
    const total = rows ? rows.length : S.site.count;
    const header = ["id", "url", ...S.site.card_fields];
    const lines = [header.map(csvCell).join(",")];
    button.disabled = true;
    for (let i = 0; i < total; i++) {
      const c = await card(rows ? rows[i] : i);
      lines.push([c.id, c.url, ...S.site.card_fields.map((f) => c.fields[f])].map(csvCell).join(","));
      if (i % 500 === 0) button.textContent = `Preparing… ${Math.round((100 * i) / total)}%`;
    }
    const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv;charset=utf-8" });
    const a = el("a", { href: URL.createObjectURL(blob), download: "imgsim-selection.csv" });
    document.body.append(a);
    a.click();
    a.remove();
    button.disabled = false;
    button.textContent = "Download CSV";
  }

  // --- views -------------------------------------------------------------------------------------
  async function viewCollection(token) {
    const { q, facets } = readParams();
    document.getElementById("search").value = q;
    const side = el("aside", { class: "facets" });
    for (const f of S.site.facets) {
      const chosen = new Set(facets[f.name] || []);
      const list = el("ul");
      f.values.forEach((value, i) => {
        const next = { ...facets, [f.name]: chosen.has(value) ? [...chosen].filter((v) => v !== value) : [...chosen, value] };
        list.append(el("li", {}, el("label", {},
          el("input", { type: "checkbox", checked: chosen.has(value), dataset: { facet: f.name, value },
            onchange: () => { location.hash = hashFor(q, next); } }),
          ` ${value} `, el("span", { class: "count", dataset: { facet: f.name, index: i + 1 },
                                      text: fmtInt(f.counts[i]) }))));
      });
      side.append(el("section", {}, el("h3", { text: f.name.replace(/_/g, " ") }), list));
    }
    const heading = el("h2", { class: "result-count", text: "…" });
    const csv = el("button", { type: "button", class: "csv", text: "Download CSV" });
    const grid = el("div", { class: "grid", id: "grid" });
    const more = el("button", { type: "button", class: "more", text: "Show more" });
    main.replaceChildren(el("div", { class: "collection" }, side,
      el("section", { class: "results" }, el("div", { class: "toolbar" }, heading, csv), grid, more)));
    const rows = await selectRows(q, facets, token);
    if (token !== S.token) return;
    const total = rows ? rows.length : S.site.count;
    heading.textContent = rows ? `${fmtInt(total)} of ${plural(S.site.count, "item")}` : plural(total, "item");
    heading.dataset.count = total;
    if (rows) countFacets(rows, side, token);
    csv.addEventListener("click", () => downloadCsv(rows, csv));
    let shown = 0;
    const showMore = async () => {
      const end = Math.min(total, shown + GRID_PAGE);
      const batch = [];
      for (let i = shown; i < end; i++) batch.push(card(rows ? rows[i] : i));
      shown = end;
      for (const c of await Promise.all(batch)) if (token === S.token) grid.append(cardLink(c));
      more.hidden = shown >= total;
    };
    more.addEventListener("click", showMore);
    if (!total) grid.append(el("p", { class: "note", text: "Nothing matches." }));
    await showMore();
    if ("IntersectionObserver" in window) {
      const watcher = new IntersectionObserver((entries) => {
        if (token !== S.token) { watcher.disconnect(); return; }
        if (entries.some((e) => e.isIntersecting) && shown < total) showMore();
      }, { rootMargin: "600px" });
      watcher.observe(more);
    }
  }

  // Each facet value's count within the current selection, not the whole collection.
  async function countFacets(rows, side, token) {
    for (const f of S.site.facets) {
      const codes = await facetCodes(f);
      if (token !== S.token) return;
      const counts = new Uint32Array(f.values.length + 1);
      for (const row of rows) counts[codes[row]]++;
      for (const span of side.querySelectorAll(`span.count[data-facet="${CSS.escape(f.name)}"]`)) {
        span.textContent = fmtInt(counts[Number(span.dataset.index)]);
      }
    }
  }

  function metadataTable(it) {
    const dl = el("dl", { class: "metadata" });
    const add = (name, value, link) => {
      if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return;
      const text = Array.isArray(value) ? value.join("; ") : String(value);
      dl.append(el("dt", { text: name.replace(/_/g, " ") }),
        el("dd", {}, link && isHttp(text) ? el("a", { href: text, rel: "noopener", target: "_blank", text }) : text));
    };
    add("id", it.id);
    for (const [name, value] of Object.entries(it.m)) add(name, value, true);
    if (it.w && it.h) add("size", `${it.w} × ${it.h} px`);
    add("image", it.url, true);
    return dl;
  }

  async function viewItem(id, token) {
    const it = await item(id);
    if (token !== S.token) return;
    if (!it) {
      main.replaceChildren(el("p", { class: "note", text: `No item ${id} in this collection.` }));
      return;
    }
    const titleField = S.site.title_field;
    const title = (titleField && it.m[titleField]) || it.id;
    document.title = `${title} · imgsim explorer`;
    const self = { id: it.id, url: it.url, thumb: it.th, title, row: it.r };
    const big = picture(self, "large");
    big.loading = "eager";
    // The original comes from another host: only when the site allows it or the visitor asks.
    const showOriginal = () => {
      const full = new Image();
      full.onload = () => {
        if (token !== S.token) return;
        if (big.tagName === "IMG") { big.src = it.url; big.dataset.source = "url"; }
        else big.replaceWith(el("img", { class: "large", src: it.url, alt: title, dataset: { source: "url" } }));
      };
      full.src = it.url;
    };
    let host = "";
    try { host = isHttp(it.url) ? new URL(it.url).host : ""; } catch (e) { host = ""; }
    const askOriginal = host && !S.site.originals
      ? el("button", { type: "button", class: "original", text: `Show the original (from ${host})`,
                       onclick: (ev) => { ev.target.remove(); showOriginal(); } }) : null;
    if (host && S.site.originals) showOriginal();
    const record = Object.entries(it.m).find(([k, v]) => /record_url|^url_|_url$|^link$/i.test(k) && isHttp(v));
    // A IIIF item: its manifest, and a viewer of the publisher's choosing (site.iiif.viewer, "{manifest}" filled in).
    const manifest = isHttp(it.m.manifest) ? it.m.manifest : null;
    const viewer = manifest && S.site.iiif && S.site.iiif.viewer
      ? S.site.iiif.viewer.replace("{manifest}", encodeURIComponent(manifest)) : null;
    const links = el("p", { class: "links" },
      record ? el("a", { class: "record", href: record[1], rel: "noopener", target: "_blank", text: "View the record ↗" }) : null,
      manifest ? el("a", { class: "manifest", href: manifest, rel: "noopener", target: "_blank", text: "IIIF manifest ↗" }) : null,
      viewer ? el("a", { class: "viewer", href: viewer, rel: "noopener", target: "_blank", text: "Open in a IIIF viewer ↗" }) : null,
      el("a", { href: `#view=map&focus=${it.r}`, text: "Show on the map" }),
      it.g !== null && it.g !== undefined ? el("a", { href: `#view=groups&page=${Math.floor(it.g / S.site.groups.page)}&g=${it.g}`, text: "Its near-duplicates" }) : null);
    const list = el("div", { class: "grid neighbours", id: "neighbours" });
    main.replaceChildren(el("article", { class: "item", dataset: { id: it.id } },
      el("div", { class: "figure" }, big, askOriginal),
      el("div", { class: "details" }, el("h1", { text: title }), links, metadataTable(it))),
      el("h2", { text: it.n.length ? `The ${plural(it.n.length, "most similar item", "most similar items")}` : "No neighbours" }), list);
    const neighbours = [...it.n].sort((a, b) => b[1] - a[1]);
    const cards = await Promise.all(neighbours.map(([row]) => card(row)));
    if (token !== S.token) return;
    cards.forEach((c, i) => {
      const score = neighbours[i][1];
      const st = strengthOf(score);
      const label = st ? `${st.label} · top ${Math.max(1, Math.round(100 - st.p))}%` : score.toFixed(3);
      const node = cardLink(c, el("span", { class: `score${st ? " " + st.label.replace(/[^a-z]+/g, "-") : ""}`,
                                            title: `cosine ${score.toFixed(3)}`, text: label }));
      node.dataset.score = score;
      if (st) { node.dataset.strength = st.label; node.dataset.percentile = st.p.toFixed(1); }
      list.append(node);
    });
  }

  async function viewGroups(token) {
    const { params } = readParams();
    const g = S.site.groups;
    const page = Math.max(0, Math.min(Number(params.get("page") || 0), Math.max(0, g.pages - 1)));
    const focus = params.get("g");
    const head = el("div", { class: "toolbar" }, el("h2", {
      text: g.count ? `${plural(g.count, "near-duplicate group")} (${plural(g.items, "item")}, cosine ≥ ${g.threshold})` : "No near-duplicate groups",
    }));
    const list = el("div", { class: "groups", id: "groups" });
    const pager = el("p", { class: "pager" },
      page > 0 ? el("a", { href: `#view=groups&page=${page - 1}`, text: "← Larger groups" }) : null,
      page + 1 < g.pages ? el("a", { href: `#view=groups&page=${page + 1}`, text: "Smaller groups →" }) : null);
    main.replaceChildren(head, list, pager);
    if (!g.count) return;
    const groups = await cached(S.groups, page, () => getJSON(`data/groups/${pad(page)}.json`), 20);
    for (const group of groups) {
      if (token !== S.token) return;
      const cards = await Promise.all(group.rows.map(card));
      const strip = el("div", { class: "strip" }, cards.map((c) => cardLink(c)));
      const section = el("section", { class: "group", id: `group-${group.g}`, dataset: { size: group.size } },
        el("h3", { text: `Group ${group.g + 1} · ${plural(group.size, "item")}` + (group.size > group.rows.length ? ` (first ${group.rows.length} shown)` : "") }),
        strip);
      list.append(section);
      if (String(group.g) === focus) { section.classList.add("focus"); section.scrollIntoView({ block: "center" }); }
    }
  }

  async function viewOutliers(token) {
    const o = S.site.outliers || { count: 0 };
    const grid = el("div", { class: "grid", id: "outliers" });
    main.replaceChildren(el("div", { class: "toolbar" }, el("h2", {
      text: !o.count ? "No outlier scores in this site"
        : o.count >= S.site.count ? "Every item, the least like any other first"
        : `The ${plural(o.count, "item")} least like any other`,
    })), el("p", { class: "note", text: "Most isolated first: blank frames, mis-scans and wrongly catalogued items tend to gather here. Isolation is " + (o.score || "") + "." }), grid);
    if (!o.count) return;
    const list = await getJSON("data/outliers.json");
    const cards = await Promise.all(list.map(([row]) => card(row)));
    if (token !== S.token) return;
    cards.forEach((c, i) => {
      const node = cardLink(c, el("span", { class: "score", text: `isolation ${list[i][1].toFixed(2)}` }));
      node.dataset.score = list[i][1];
      grid.append(node);
    });
  }

  async function loadMap() {
    if (!S.map) {
      S.map = (async () => {
        const xy = new Uint16Array(await getBytes("data/map.bin"));
        const clusters = new Uint8Array(await getBytes("data/clusters.bin"));
        const n = clusters.length;
        // a 256 x 256 grid of cells for finding the point under the pointer
        const start = new Int32Array(65537);
        const cell = new Int32Array(n);
        for (let i = 0; i < n; i++) { cell[i] = (xy[2 * i] >> 8) + ((xy[2 * i + 1] >> 8) << 8); start[cell[i] + 1]++; }
        for (let c = 0; c < 65536; c++) start[c + 1] += start[c];
        const fill = start.slice(0, 65536);
        const members = new Int32Array(n);
        for (let i = 0; i < n; i++) members[fill[cell[i]]++] = i;
        return { xy, clusters, start, members, n };
      })();
    }
    return S.map;
  }

  async function viewMap(token) {
    const { params } = readParams();
    const focus = params.has("focus") ? Number(params.get("focus")) : null;
    const choices = [["cluster", "cluster"], ...S.site.facets.map((f) => [f.name, f.name.replace(/_/g, " ")])];
    let colourBy = params.get("color") || "cluster";
    const select = el("select", { id: "color-by", "aria-label": "Colour points by" },
      choices.map(([v, label]) => el("option", { value: v, selected: v === colourBy, text: label })));
    const legend = el("div", { class: "legend" });
    const canvas = el("canvas", { id: "map", tabindex: "0", "aria-label": "Map of the collection" });
    const tip = el("div", { class: "tip", hidden: true });
    const counter = el("span", { class: "points" });
    main.replaceChildren(el("div", { class: "toolbar" }, el("h2", { text: "Map" }),
      el("label", {}, "Colour by ", select), counter,
      el("span", { class: "hint", text: "wheel to zoom · drag to pan · click a point to open it" })),
      el("div", { class: "map-wrap" }, canvas, tip), legend);
    const m = await loadMap();
    if (token !== S.token) return;
    let codes = m.clusters;
    let view = { x0: -1500, y0: -1500, span: 68535 };
    const ratio = window.devicePixelRatio || 1;
    const resize = () => {
      const w = canvas.clientWidth, h = canvas.clientHeight;
      canvas.width = Math.max(1, Math.round(w * ratio));
      canvas.height = Math.max(1, Math.round(h * ratio));
    };
    const colours = () => {
      const table = new Uint32Array(256);
      const count = colourBy === "cluster" ? S.site.map.clusters : 256;
      for (let i = 0; i < 256; i++) {
        const hex = colourBy === "cluster" ? PALETTE[i % PALETTE.length] : i === 0 ? "#c8c8c8" : PALETTE[(i - 1) % PALETTE.length];
        const r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
        table[i] = (255 << 24) | (b << 16) | (g << 8) | r;
      }
      return { table, count };
    };
    let palette = colours();
    const draw = () => {
      const W = canvas.width, H = canvas.height;
      const ctx = canvas.getContext("2d");
      const image = ctx.createImageData(W, H);
      const px = new Uint32Array(image.data.buffer);
      px.fill(0xffffffff);
      const scale = Math.min(W, H) / view.span;
      const ox = (W - view.span * scale) / 2, oy = (H - view.span * scale) / 2;
      const dot = m.n > 50000 ? 1 : m.n > 2000 ? 2 : 3;
      const circles = m.n <= 2000;  // few points: round dots drawn as paths, easy to see and to hit
      let drawn = 0;
      for (let i = 0; i < m.n; i++) {
        const x = Math.floor((m.xy[2 * i] - view.x0) * scale + ox), y = Math.floor((m.xy[2 * i + 1] - view.y0) * scale + oy);
        if (x < 0 || y < 0 || x >= W || y >= H) continue;
        drawn++;
        if (circles) continue;
        const colour = palette.table[codes[i]];
        for (let dy = 0; dy < dot && y + dy < H; dy++) for (let dx = 0; dx < dot && x + dx < W; dx++) px[(y + dy) * W + x + dx] = colour;
      }
      ctx.putImageData(image, 0, 0);
      if (circles) {
        const radius = (m.n <= 300 ? 6 : 4) * ratio;
        for (let i = 0; i < m.n; i++) {
          const x = (m.xy[2 * i] - view.x0) * scale + ox, y = (m.xy[2 * i + 1] - view.y0) * scale + oy;
          if (x < 0 || y < 0 || x >= W || y >= H) continue;
          const c = palette.table[codes[i]];
          ctx.fillStyle = `rgb(${c & 255},${(c >> 8) & 255},${(c >> 16) & 255})`;
          ctx.beginPath(); ctx.arc(x, y, radius, 0, 2 * Math.PI); ctx.fill();
        }
      }
      if (focus !== null && focus >= 0 && focus < m.n) {
        const x = (m.xy[2 * focus] - view.x0) * scale + ox, y = (m.xy[2 * focus + 1] - view.y0) * scale + oy;
        ctx.strokeStyle = "#000"; ctx.lineWidth = 2 * ratio;
        ctx.beginPath(); ctx.arc(x, y, 9 * ratio, 0, 2 * Math.PI); ctx.stroke();
      }
      canvas.dataset.points = drawn;
      counter.textContent = `${fmtInt(drawn)} of ${fmtInt(m.n)} points`;
      return { scale, ox, oy };
    };
    const fillLegend = () => {
      legend.replaceChildren();
      if (colourBy === "cluster") {
        for (let i = 0; i < S.site.map.clusters; i++) legend.append(el("span", {}, el("i", { style: `background:${PALETTE[i % PALETTE.length]}` }), `cluster ${i + 1}`));
      } else {
        const f = S.site.facets.find((x) => x.name === colourBy);
        legend.append(el("span", {}, el("i", { style: "background:#c8c8c8" }), "no value"));
        f.values.forEach((v, i) => legend.append(el("span", {}, el("i", { style: `background:${PALETTE[i % PALETTE.length]}` }), v)));
      }
    };
    const recolour = async () => {
      const f = S.site.facets.find((x) => x.name === colourBy);
      codes = f ? await facetCodes(f) : m.clusters;
      palette = colours();
      fillLegend();
      geometry = draw();
    };
    resize();
    let geometry = draw();
    fillLegend();
    select.addEventListener("change", () => {
      colourBy = select.value;
      const p = new URLSearchParams(location.hash.slice(1));
      p.set("view", "map");
      if (colourBy === "cluster") p.delete("color"); else p.set("color", colourBy);
      history.replaceState(null, "", "#" + p.toString());  // kept in the address, without a redraw from scratch
      recolour();
    });
    const toData = (ev) => {
      const r = canvas.getBoundingClientRect();
      const x = (ev.clientX - r.left) * ratio, y = (ev.clientY - r.top) * ratio;
      return [(x - geometry.ox) / geometry.scale + view.x0, (y - geometry.oy) / geometry.scale + view.y0, x, y];
    };
    const nearest = (ev) => {
      const [u, v] = toData(ev);
      const radius = (8 * ratio) / geometry.scale;
      let best = -1, bestD = radius * radius;
      const c0 = Math.max(0, Math.floor((u - radius) / 256)), c1 = Math.min(255, Math.floor((u + radius) / 256));
      const r0 = Math.max(0, Math.floor((v - radius) / 256)), r1 = Math.min(255, Math.floor((v + radius) / 256));
      for (let cy = r0; cy <= r1; cy++) for (let cx = c0; cx <= c1; cx++) {
        const c = cx + (cy << 8);
        for (let k = m.start[c]; k < m.start[c + 1]; k++) {
          const i = m.members[k];
          const dx = m.xy[2 * i] - u, dy = m.xy[2 * i + 1] - v;
          const d = dx * dx + dy * dy;
          if (d < bestD) { bestD = d; best = i; }
        }
      }
      return best;
    };
    let dragging = null, hovered = -1, moved = false;
    canvas.addEventListener("mousedown", (ev) => { dragging = [ev.clientX, ev.clientY, view.x0, view.y0]; moved = false; });
    window.addEventListener("mouseup", () => { dragging = null; }, { once: false });
    canvas.addEventListener("mousemove", async (ev) => {
      if (dragging) {
        const dx = (ev.clientX - dragging[0]) * ratio / geometry.scale, dy = (ev.clientY - dragging[1]) * ratio / geometry.scale;
        if (Math.abs(dx) + Math.abs(dy) > 0) moved = true;
        view = { ...view, x0: dragging[2] - dx, y0: dragging[3] - dy };
        geometry = draw();
        return;
      }
      const i = nearest(ev);
      if (i === hovered) return;
      hovered = i;
      if (i < 0) { tip.hidden = true; canvas.style.cursor = ""; return; }
      canvas.style.cursor = "pointer";
      const c = await card(i);
      if (hovered !== i) return;
      const r = canvas.getBoundingClientRect();
      tip.replaceChildren(picture(c, "tip-image"), el("span", { text: c.title }));
      tip.style.left = `${Math.min(ev.clientX - r.left + 14, r.width - 180)}px`;
      tip.style.top = `${Math.min(ev.clientY - r.top + 14, r.height - 200)}px`;
      tip.hidden = false;
      tip.dataset.id = c.id;
    });
    canvas.addEventListener("mouseleave", () => { tip.hidden = true; hovered = -1; });
    canvas.addEventListener("click", async (ev) => {
      if (moved) return;
      const i = nearest(ev);
      if (i >= 0) location.hash = itemHref((await card(i)).id).slice(1);
    });
    canvas.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const [u, v] = toData(ev);
      const factor = ev.deltaY < 0 ? 0.8 : 1.25;
      const span = Math.min(200000, Math.max(64, view.span * factor));
      const k = span / view.span;
      view = { span, x0: u - (u - view.x0) * k, y0: v - (v - view.y0) * k };
      geometry = draw();
    }, { passive: false });
    const onResize = () => { if (token !== S.token) { window.removeEventListener("resize", onResize); return; } resize(); geometry = draw(); };
    window.addEventListener("resize", onResize);
    if (colourBy !== "cluster") recolour();
  }

  async function viewUpload(token) {
    const file = el("input", { type: "file", name: "image", accept: "image/*", id: "upload-file" });
    const url = el("input", { type: "url", name: "url", placeholder: "https://… an image address", id: "upload-url" });
    const results = el("div", { class: "grid", id: "upload-results" });
    const note = el("p", { class: "note" });
    const form = el("form", { class: "upload", id: "upload-form" },
      el("label", {}, "An image file ", file), el("label", {}, "or its address ", url),
      el("button", { type: "submit", text: "Find similar images" }));
    main.replaceChildren(el("h2", { text: "Search by image" }), form, note, results);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = new FormData();
      if (file.files.length) body.append("image", file.files[0]);
      else if (url.value) body.append("url", url.value);
      else { note.textContent = "Choose an image file or give an address."; return; }
      note.textContent = "Searching…";
      results.replaceChildren();
      const r = await fetch("api/search?k=20", { method: "POST", body });
      const answer = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
      if (token !== S.token) return;
      if (!r.ok) { note.textContent = `Search failed: ${answer.error || r.status}`; return; }
      note.textContent = `${answer.results.length} most similar`;
      for (const match of answer.results) {
        const it = await item(match.id);
        const c = it ? await card(it.r) : { id: match.id, url: match.metadata.url, thumb: null, title: match.id, row: -1 };
        const node = cardLink(c, el("span", { class: "score", text: match.score.toFixed(3) }));
        node.dataset.score = match.score;
        results.append(node);
      }
    });
  }

  // --- routing -----------------------------------------------------------------------------------
  async function route() {
    const token = ++S.token;
    const { params } = readParams();
    const id = params.get("item");
    const view = id !== null ? "item" : params.get("view") || "collection";
    document.title = S.site.title;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
    main.dataset.view = view;
    window.scrollTo(0, 0);
    try {
      if (view === "item") await viewItem(id, token);
      else if (view === "map") await viewMap(token);
      else if (view === "groups") await viewGroups(token);
      else if (view === "outliers") await viewOutliers(token);
      else if (view === "upload" && S.served) await viewUpload(token);
      else await viewCollection(token);
      if (token === S.token) main.dataset.ready = view;
    } catch (e) {
      if (token === S.token) main.replaceChildren(el("p", { class: "note error", text: `Could not load this view: ${e.message}` }));
    }
  }

  async function start() {
    try {
      S.site = await getJSON("data/site.json");
    } catch (e) {
      main.replaceChildren(el("p", { class: "note error", text: `This explorer's data could not be read (${e.message}). Serve the site over HTTP, e.g. python -m http.server.` }));
      return;
    }
    document.querySelector(".brand").textContent = S.site.title;
    document.getElementById("search-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = document.getElementById("search").value.trim();
      location.hash = hashFor(q, {});
    });
    window.addEventListener("hashchange", route);
    route();
    // Served by `imgsim serve` (which marks the page; a static host does not): search by image too.
    if (!document.querySelector('meta[name="imgsim-api"]')) return;
    fetch("api/healthz").then((r) => (r.ok ? r.json() : null)).then((health) => {
      if (health && health.search) {
        S.served = true;
        document.getElementById("upload-link").hidden = false;
        if (readParams().params.get("view") === "upload") route();
      }
    }, () => {});
  }
  start();
})();
