// wmpd search page: plain ES2020, no dependencies, no inline code (the CSP forbids it).
"use strict";

(() => {
  const PAGE_SIZE = 48;
  const TYPING_DEBOUNCE_MS = 200;
  const FOLDER_DEBOUNCE_MS = 400;
  const STATUS_BUSY_MS = 2000;
  const STATUS_IDLE_MS = 15000;
  const STATUS_DOWN_MS = 4000;
  const THUMB_SIZE = 320;
  const THUMB_SIZE_2X = 640;
  const CHIP_THUMB_SIZE = 64;
  // Start fetching the next page this far before the sentinel scrolls into view.
  const PREFETCH_MARGIN_PX = 900;

  const numbers = new Intl.NumberFormat();
  const dates = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
  const $ = (id) => document.getElementById(id);
  const narrowScreen = window.matchMedia("(max-width: 480px)");

  const ui = {
    topbar: $("topbar"),
    form: $("search-form"),
    q: $("q"),
    chip: $("query-chip"),
    chipImage: $("query-chip-image"),
    chipLabel: $("query-chip-label"),
    chipRemove: $("query-chip-remove"),
    pickImage: $("pick-image"),
    imageInput: $("image-input"),
    helpToggle: $("help-toggle"),
    help: $("help"),
    error: $("search-error"),
    filtersToggle: $("filters-toggle"),
    filtersCount: $("filters-count"),
    filters: $("filters"),
    folder: $("filter-folder"),
    folderOptions: $("folder-options"),
    after: $("filter-after"),
    before: $("filter-before"),
    type: $("filter-type"),
    filtersClear: $("filters-clear"),
    banner: $("banner"),
    bannerText: $("banner-text"),
    bannerDetail: $("banner-detail"),
    bannerList: $("banner-list"),
    bannerDismiss: $("banner-dismiss"),
    bannerProgress: $("banner-progress"),
    bannerFill: $("banner-progress-fill"),
    count: $("result-count"),
    empty: $("empty"),
    emptyArt: $("empty-art"),
    emptyTitle: $("empty-title"),
    emptyText: $("empty-text"),
    emptyActions: $("empty-actions"),
    results: $("results"),
    sentinel: $("sentinel"),
    loadMore: $("load-more"),
    loadingMore: $("loading-more"),
    summary: $("library-summary"),
  };

  const state = {
    example: null, // {file, url, label}: a picture given by drop, paste or the file picker
    similar: null, // {id, label}: "more like this" on a catalogued picture
    next: null, // offset of the next page, or null at the end
    shown: 0,
    controller: null, // AbortController of the request in flight
    typingTimer: 0,
    status: null,
    statusTimer: 0,
    statusInFlight: false,
    daemonDown: false,
    retryWhenReady: false,
    retryWhenUp: false,
    dismissedNotice: "",
    focusFirstResult: false,
    pagingFailed: false,
  };

  // ---- small helpers --------------------------------------------------------------------

  function h(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Text with `backticks` becomes text and <code> nodes (never HTML).
  function rich(text) {
    return String(text).split("`").map((part, i) => (i % 2 ? h("code", {}, part) : part));
  }

  function basename(path) {
    const parts = String(path).split(/[\\/]/);
    return parts[parts.length - 1] || path;
  }

  function dirname(path) {
    const match = String(path).match(/^(.*)[\\/][^\\/]*$/);
    return match ? match[1] || "/" : "";
  }

  function plural(count, one, many) {
    return `${numbers.format(count)} ${count === 1 ? one : many}`;
  }

  function formatEta(seconds) {
    if (seconds < 45) return "less than a minute left";
    if (seconds < 90) return "about 1 min left";
    if (seconds < 3600) return `about ${Math.round(seconds / 60)} min left`;
    const hours = Math.floor(seconds / 3600);
    const minutes = Math.round((seconds % 3600) / 60);
    return minutes ? `about ${hours} h ${minutes} min left` : `about ${hours} h left`;
  }

  function isTyping(target) {
    if (!(target instanceof HTMLElement)) return false;
    return target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
  }

  function isImageFile(file) {
    // Some systems report no type for HEIC; the daemon decides for those.
    return Boolean(file) && (file.type.startsWith("image/") || file.type === "");
  }

  // ---- talking to the daemon ------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, parameter) {
      super(message);
      this.status = status;
      this.code = code;
      this.parameter = parameter || null;
    }
  }

  async function api(url, init = {}) {
    let response;
    try {
      response = await fetch(url, {
        credentials: "same-origin",
        ...init,
        headers: { Accept: "application/json", ...(init.headers || {}) },
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "network", "wmpd is not answering.");
    }
    if (response.status === 401) {
      const here = `${window.location.pathname}${window.location.search}`;
      window.location.assign(`/login?next=${encodeURIComponent(here)}`);
      throw new ApiError(401, "unauthorized", "Sign in to search.");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      if (err.name === "AbortError") throw err;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiError(
        response.status,
        error.code || `http_${response.status}`,
        error.message || `the daemon answered HTTP ${response.status}`,
        error.parameter,
      );
    }
    return body;
  }

  function filterEntries() {
    const entries = [];
    const folder = ui.folder.value.trim();
    if (folder) entries.push(["folder", folder]);
    if (ui.after.value) entries.push(["after", ui.after.value]);
    if (ui.before.value) entries.push(["before", ui.before.value]);
    if (ui.type.value) entries.push(["type", ui.type.value]);
    return entries;
  }

  function hasQuery() {
    return Boolean(ui.q.value.trim() || state.example || state.similar);
  }

  function buildRequest(offset) {
    const text = ui.q.value.trim();
    const filters = filterEntries();
    if (state.example) {
      const body = new FormData();
      body.append("image", state.example.file, state.example.file.name || "pasted-picture");
      if (text) body.append("q", text);
      body.append("k", String(PAGE_SIZE));
      body.append("offset", String(offset));
      for (const [key, value] of filters) body.append(key, value);
      return ["/api/search", { method: "POST", body }];
    }
    if (state.similar && text) {
      // Words on top of "more like this" need the general search endpoint.
      const body = { image_id: state.similar.id, q: text, k: PAGE_SIZE, offset, ...Object.fromEntries(filters) };
      return ["/api/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      }];
    }
    if (state.similar) {
      const params = new URLSearchParams([["k", PAGE_SIZE], ["offset", offset], ...filters]);
      return [`/api/images/${state.similar.id}/similar?${params}`, {}];
    }
    const params = new URLSearchParams([["q", text], ["k", PAGE_SIZE], ["offset", offset], ...filters]);
    return [`/api/search?${params}`, {}];
  }

  // ---- searching ------------------------------------------------------------------------

  function scheduleSearch(delay = TYPING_DEBOUNCE_MS) {
    clearTimeout(state.typingTimer);
    state.typingTimer = setTimeout(() => runSearch(), delay);
  }

  function abortSearch() {
    if (state.controller) state.controller.abort();
    state.controller = null;
    setBusy(false);
  }

  async function runSearch({ append = false } = {}) {
    clearTimeout(state.typingTimer);
    if (!append) syncUrl();
    if (!hasQuery()) {
      abortSearch();
      clearError();
      showWelcome();
      return;
    }
    if (append && state.next === null) return;
    abortSearch();
    const controller = new AbortController();
    state.controller = controller;
    const [url, init] = buildRequest(append ? state.next : 0);
    setBusy(true, append);
    try {
      const page = await api(url, { ...init, signal: controller.signal });
      if (controller !== state.controller) return;
      clearError();
      state.pagingFailed = false;
      state.retryWhenReady = false;
      state.retryWhenUp = false;
      let hits = page.results || [];
      if (state.similar) hits = hits.filter((hit) => hit.id !== state.similar.id);
      state.next = page.next ?? null;
      renderResults(hits, append, page.took_ms);
    } catch (err) {
      if (err.name === "AbortError" || controller !== state.controller) return;
      if (append) {
        // Scrolling must not retry in a loop; the Load more button does, by hand.
        state.pagingFailed = true;
        showFieldError(`could not load more pictures: ${err.message}`);
      } else {
        state.next = null; // stale results stay visible (dimmed) but are not paged
        showSearchError(err);
      }
    } finally {
      if (controller === state.controller) {
        state.controller = null;
        setBusy(false);
        requestAnimationFrame(loadMoreIfNear);
      }
    }
  }

  function loadMore({ manual = false } = {}) {
    if (state.pagingFailed && !manual) return;
    if (state.next !== null && !state.controller && hasQuery()) runSearch({ append: true });
  }

  function loadMoreIfNear() {
    if (state.next === null || ui.sentinel.offsetParent === null) return;
    if (ui.sentinel.getBoundingClientRect().top < window.innerHeight + PREFETCH_MARGIN_PX) loadMore();
  }

  function setBusy(busy, append = false) {
    ui.topbar.classList.toggle("busy", busy && !append);
    ui.results.setAttribute("aria-busy", busy ? "true" : "false");
    ui.loadingMore.hidden = !(busy && append);
    ui.loadMore.hidden = busy || state.next === null || !hasQuery();
  }

  function syncUrl() {
    const params = new URLSearchParams();
    const text = ui.q.value.trim();
    if (text) params.set("q", text);
    if (state.similar) params.set("similar", String(state.similar.id));
    for (const [key, value] of filterEntries()) params.set(key, value);
    const query = params.toString();
    const url = query ? `${window.location.pathname}?${query}` : window.location.pathname;
    if (url !== `${window.location.pathname}${window.location.search}`) {
      history.replaceState(null, "", url);
    }
    let subject = text;
    if (!subject && state.similar) subject = `like ${state.similar.label}`;
    if (!subject && state.example) subject = "similar pictures";
    document.title = subject ? `${subject} — wmpd` : "wmpd — search your pictures";
  }

  // ---- rendering results ----------------------------------------------------------------

  function renderResults(hits, append, tookMs) {
    if (!append) {
      ui.results.replaceChildren();
      state.shown = 0;
      if (window.scrollY > 0) window.scrollTo({ top: 0 });
    }
    ui.results.classList.remove("stale");
    const fragment = document.createDocumentFragment();
    for (const hit of hits) fragment.append(renderCard(hit));
    ui.results.append(fragment);
    state.shown += hits.length;
    if (!ui.results.querySelector('.card-link[tabindex="0"]') && ui.results.firstElementChild) {
      setActiveCard(ui.results.firstElementChild);
    }
    if (state.shown === 0) showNoResults();
    else ui.empty.hidden = true;
    const more = state.next !== null ? "+" : "";
    const took = typeof tookMs === "number" ? ` · took ${Math.max(1, Math.round(tookMs))} ms` : "";
    ui.count.textContent = state.shown
      ? `${numbers.format(state.shown)}${more} ${state.shown === 1 && !more ? "picture" : "pictures"}${took}`
      : `No pictures${took}`;
    if (state.focusFirstResult && !append && ui.results.firstElementChild) {
      focusCard(ui.results.firstElementChild);
    }
    state.focusFirstResult = false;
  }

  function renderCard(hit) {
    const name = basename(hit.path);
    const folder = dirname(hit.path);
    const thumb = `${hit.thumb_url}?size=${THUMB_SIZE}`;
    const thumb2x = `${hit.thumb_url}?size=${THUMB_SIZE_2X}`;
    const score = Number(hit.score).toFixed(3);
    const taken = hit.taken_at ? dates.format(new Date(hit.taken_at)) : null;
    const copies = (hit.paths || []).length - 1;
    const meta = [
      taken,
      hit.width && hit.height ? `${hit.width}×${hit.height}` : null,
      hit.format,
      copies > 0 ? plural(copies, "more copy", "more copies") : null,
    ].filter(Boolean).join(" · ");

    const card = h("li", { class: "card", "data-id": hit.id, "data-path": hit.path });
    // loading="lazy" must be set before src, or the browser may start the fetch at once.
    const img = h("img", {
      loading: "lazy", decoding: "async", alt: name, width: THUMB_SIZE, height: THUMB_SIZE,
      srcset: `${thumb} 1x, ${thumb2x} 2x`, src: thumb,
    });
    img.addEventListener("load", () => card.classList.add("loaded"), { once: true });
    img.addEventListener("error", () => card.classList.add("broken"), { once: true });
    const link = h(
      "a",
      {
        class: "card-link", href: hit.file_url, target: "_blank", rel: "noopener", tabindex: "-1",
        "aria-label": `${name}, score ${score}, in ${folder || "/"}${taken ? `, taken ${taken}` : ""}`,
      },
      img,
      h("span", { class: "card-fallback", "aria-hidden": "true" }, "Preview unavailable"),
      h(
        "span",
        { class: "card-info", "aria-hidden": "true" },
        h("span", { class: "card-top" },
          h("span", { class: "card-name" }, name),
          h("span", { class: "card-score", title: "similarity score" }, score)),
        h("span", { class: "card-path" }, folder),
        meta ? h("span", { class: "card-meta" }, meta) : null,
      ),
    );
    const similar = h(
      "button",
      {
        type: "button", class: "card-similar", tabindex: "-1",
        "aria-label": `More like ${name}`, title: "More like this (m)",
      },
      similarIcon(),
      h("span", { class: "card-similar-label" }, "More like this"),
    );
    similar.addEventListener("click", () => moreLikeThis(card, false));
    card.append(link, similar);
    return card;
  }

  function similarIcon() {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    for (const [x, y] of [[4, 4], [13, 4], [4, 13]]) {
      const rect = document.createElementNS(ns, "rect");
      for (const [key, value] of Object.entries({ x, y, width: 7, height: 7, rx: 1.5 })) {
        rect.setAttribute(key, String(value));
      }
      svg.append(rect);
    }
    const plus = document.createElementNS(ns, "path");
    plus.setAttribute("d", "M16.5 13v7M13 16.5h7");
    svg.append(plus);
    return svg;
  }

  // ---- empty states ---------------------------------------------------------------------

  function showEmpty({ art, title, text, actions = [] }) {
    // Status polls re-render the welcome state; an unchanged one must keep its focus.
    const signature = JSON.stringify([art, title, text, actions.map((action) => action.textContent)]);
    if (!ui.empty.hidden && ui.empty.dataset.signature === signature) return;
    ui.empty.dataset.signature = signature;
    ui.empty.hidden = false;
    ui.empty.dataset.kind = art;
    ui.emptyArt.className = `empty-art empty-art-${art}`;
    ui.emptyTitle.textContent = title;
    ui.emptyText.replaceChildren(...[].concat(text).map((line) => h("p", {}, rich(line))));
    ui.emptyActions.replaceChildren(...actions);
  }

  function button(label, onclick, primary = false) {
    return h("button", { type: "button", class: primary ? "button button-primary" : "button", onclick }, label);
  }

  function libraryIsEmpty() {
    return Boolean(state.status) && !state.status.images;
  }

  function emptyLibraryMessage() {
    const status = state.status;
    if (status.state === "loading_model") {
      return { art: "loading", title: "Loading the model…", text: "Search starts working in a moment." };
    }
    if (status.state === "indexing") {
      return {
        art: "loading",
        title: "Indexing your pictures…",
        text: "Results appear here as pictures are indexed; you can start searching now.",
      };
    }
    const roots = (status.roots || []).map((root) => root.path);
    if (roots.length) {
      return {
        art: "library",
        title: "No pictures indexed yet",
        text: [`wmpd watches ${roots.map((r) => `\`${r}\``).join(", ")} but has found no pictures it can read there yet.`,
          "Add pictures to those folders, or add more folders under `folders:` in your config."],
      };
    }
    return {
      art: "library",
      title: "No pictures indexed yet",
      text: ["Add folders to your config: list your picture folders under `folders:` in the config " +
        "file (`wmpd config init` writes a commented one), then restart wmpd."],
    };
  }

  function showWelcome() {
    ui.results.replaceChildren();
    ui.results.classList.remove("stale");
    state.shown = 0;
    state.next = null;
    ui.count.textContent = "";
    ui.loadMore.hidden = true;
    if (state.status && state.status.state === "model_error") {
      showEmpty({
        art: "error",
        title: "Search is unavailable",
        text: "wmpd could not load its model; the notice above says why.",
      });
      return;
    }
    if (libraryIsEmpty()) {
      showEmpty(emptyLibraryMessage());
      return;
    }
    const count = state.status ? plural(state.status.images, "picture", "pictures") : "your pictures";
    showEmpty({
      art: "search",
      title: `Search ${count}`,
      text: [
        "Describe what you are looking for — “a red circle on grass”, “beach at sunset” — " +
          "or drop a picture anywhere on this page to find similar ones.",
        "Refine with `-term` (less of it), `+term` (more of it) and `term^2` (twice the weight).",
      ],
      actions: [button("Choose a picture…", () => ui.imageInput.click())],
    });
  }

  function showNoResults() {
    if (libraryIsEmpty()) {
      showEmpty(emptyLibraryMessage());
      return;
    }
    const filtered = filterEntries().length > 0;
    showEmpty({
      art: "search",
      title: "No pictures match",
      text: filtered
        ? "Nothing matches with the current filters. Widen the dates, pick another folder, or clear them."
        : "Try other words, or fewer of them.",
      actions: filtered ? [button("Clear filters", clearFilters, true)] : [],
    });
  }

  // ---- errors ---------------------------------------------------------------------------

  const PARAMETER_LABELS = {
    q: "Search", image: "Picture", image_id: "Picture", folder: "Folder", after: "Taken after",
    before: "Taken before", type: "Type", k: "Page size", offset: "Page", min_score: "Minimum score",
  };

  function showFieldError(message, parameter) {
    const label = parameter && PARAMETER_LABELS[parameter];
    const text = label ? `${label}: ${message}` : message.charAt(0).toUpperCase() + message.slice(1);
    ui.error.replaceChildren(...rich(text));
    ui.error.hidden = false;
    const field = { q: ui.q, folder: ui.folder, after: ui.after, before: ui.before, type: ui.type }[parameter];
    for (const input of [ui.q, ui.folder, ui.after, ui.before, ui.type]) {
      input.toggleAttribute("aria-invalid", input === field);
    }
    if (field && field !== ui.q) field.setAttribute("aria-describedby", "search-error");
    if (field && field !== ui.q) openFilters(true);
  }

  function clearError() {
    ui.error.hidden = true;
    ui.error.replaceChildren();
    for (const input of [ui.q, ui.folder, ui.after, ui.before, ui.type]) input.removeAttribute("aria-invalid");
  }

  function showSearchError(err) {
    ui.results.classList.add("stale");
    if (err.status === 400) {
      showFieldError(err.message, err.parameter);
      return;
    }
    if (err.status === 413) {
      showFieldError("that picture is larger than the daemon accepts (`server.max_upload_bytes`).", "image");
      return;
    }
    if (err.status === 404 && state.similar) {
      showFieldError("that picture is no longer in the library.", "image_id");
      return;
    }
    clearError();
    ui.results.replaceChildren();
    state.shown = 0;
    state.next = null;
    ui.count.textContent = "";
    if (err.code === "model_loading") {
      state.retryWhenReady = true;
      showEmpty({
        art: "loading",
        title: "The model is still loading",
        text: "Your search runs as soon as it is ready — usually a few seconds.",
      });
      pollStatus();
      return;
    }
    if (err.status === 0) {
      state.retryWhenUp = true;
      showEmpty({
        art: "offline",
        title: "Can’t reach wmpd",
        text: ["The daemon may have stopped. Start it with `wmpd run`, or `wmpd service install` to keep it running.",
          "This page retries on its own."],
        actions: [button("Try again", () => runSearch(), true)],
      });
      return;
    }
    showEmpty({
      art: "error",
      title: "Something went wrong",
      text: [`wmpd answered: ${err.message}`, "The log has the details (`wmpd service logs`)."],
      actions: [button("Try again", () => runSearch(), true)],
    });
  }

  // ---- the query chip (example picture or "more like this") ------------------------------

  function useExample(file, label) {
    if (!isImageFile(file)) {
      showFieldError(`${file ? `“${file.name}”` : "that"} is not a picture.`, "image");
      return;
    }
    dropExample();
    state.similar = null;
    state.example = { file, url: URL.createObjectURL(file), label: label || file.name || "Pasted picture" };
    renderChip();
    runSearch();
  }

  function dropExample() {
    if (state.example) URL.revokeObjectURL(state.example.url);
    state.example = null;
  }

  function moreLikeThis(card, fromKeyboard) {
    const id = Number(card.dataset.id);
    dropExample();
    state.similar = { id, label: basename(card.dataset.path || `picture ${id}`) };
    if (!card.dataset.path) labelSimilarFromCatalog(id);
    ui.q.value = "";
    state.focusFirstResult = fromKeyboard;
    renderChip();
    runSearch();
    if (!fromKeyboard) ui.q.focus({ preventScroll: true });
  }

  function renderChip() {
    const chip = state.example || state.similar;
    ui.chip.hidden = !chip;
    ui.form.classList.toggle("has-chip", Boolean(chip));
    if (!chip) {
      ui.chipImage.removeAttribute("src");
      ui.q.placeholder = narrowScreen.matches ? "Describe a picture" : "Describe a picture, or drop one here";
      return;
    }
    ui.chipImage.src = state.example ? state.example.url : `/thumb/${state.similar.id}?size=${CHIP_THUMB_SIZE}`;
    ui.chipLabel.textContent = state.example ? state.example.label : `Like ${state.similar.label}`;
    ui.chip.title = ui.chipLabel.textContent;
    ui.chipRemove.setAttribute("aria-label",
      state.example ? "Remove the example picture" : "Stop searching for similar pictures");
    ui.q.placeholder = narrowScreen.matches ? "Add words to refine" : "Add words to refine, e.g. +night";
  }

  function removeChip() {
    dropExample();
    state.similar = null;
    renderChip();
    ui.q.focus();
    runSearch();
  }

  async function labelSimilarFromCatalog(id) {
    try {
      const image = await api(`/api/images/${id}`);
      if (state.similar && state.similar.id === id && image.paths && image.paths.length) {
        state.similar.label = basename(image.paths[0]);
        renderChip();
        syncUrl();
      }
    } catch (err) {
      // The search itself reports a missing picture; the chip keeps its generic label.
    }
  }

  function clearAll() {
    ui.q.value = "";
    dropExample();
    state.similar = null;
    renderChip();
    clearError();
    runSearch();
    ui.q.focus();
  }

  // ---- filters --------------------------------------------------------------------------

  function updateFilterBadge() {
    const active = filterEntries().length;
    ui.filtersCount.hidden = active === 0;
    ui.filtersCount.textContent = String(active);
    ui.filtersToggle.setAttribute("aria-label", active ? `Filters, ${active} active` : "Filters");
    ui.filtersClear.hidden = active === 0;
  }

  function onFilterChange(delay) {
    updateFilterBadge();
    if (hasQuery()) scheduleSearch(delay);
    else syncUrl();
  }

  function clearFilters() {
    ui.folder.value = "";
    ui.after.value = "";
    ui.before.value = "";
    ui.type.value = "";
    onFilterChange(0);
  }

  function openFilters(open) {
    ui.filters.classList.toggle("open", open);
    ui.filtersToggle.setAttribute("aria-expanded", String(open));
  }

  function fillFolderOptions(roots) {
    const paths = (roots || []).map((root) => root.path).sort();
    const current = [...ui.folderOptions.options].map((option) => option.value);
    if (paths.join("\n") === current.join("\n")) return;
    ui.folderOptions.replaceChildren(...paths.map((path) => h("option", { value: path })));
  }

  // ---- status banner --------------------------------------------------------------------

  function notices(status) {
    const items = [];
    for (const root of status.roots || []) {
      if (root.state === "offline") {
        items.push(`\`${root.path}\` is offline${root.detail ? ` (${root.detail})` : ""}; ` +
          "its pictures stay in the library until it is back.");
      }
    }
    for (const warning of status.warnings || []) items.push(warning);
    return items;
  }

  function describeStatus(status) {
    const items = notices(status);
    const detail = status.state_detail || null;
    if (status.state === "loading_model") {
      return { tone: "info", busy: true, text: "Loading model…", detail: detail || "Search starts as soon as it is ready.", items };
    }
    if (status.state === "model_error") {
      return {
        tone: "error",
        text: `The model could not be loaded: ${detail || "no reason given"}.`,
        detail: "Check `model.name` and `model.pretrained` in your config (`wmpd config check`), then restart wmpd.",
        items,
      };
    }
    if (status.state === "indexing") {
      const progress = status.progress || {};
      const total = progress.total || 0;
      const done = Math.min(progress.done || 0, total);
      if (!total) return { tone: "info", busy: true, text: "Looking for new pictures…", detail, items };
      const extras = [];
      if (progress.rate > 0) extras.push(`${progress.rate.toFixed(1)} images/s`);
      if (typeof progress.eta_seconds === "number") extras.push(formatEta(progress.eta_seconds));
      const text = `Indexing ${numbers.format(done)} / ${numbers.format(total)}` +
        (extras.length ? ` — ${extras.join(", ")}` : "");
      return { tone: "info", busy: true, text, detail, items, fraction: done / total };
    }
    if (status.state === "paused") {
      return { tone: "warn", text: `Indexing is paused${detail ? `: ${detail}` : "."}`, items };
    }
    if (!items.length) return null;
    const text = items.length === 1 ? items.shift() : `${items.length} things need your attention:`;
    return { tone: "warn", text, items, dismissible: true };
  }

  function renderBanner(view) {
    const signature = view ? JSON.stringify([view.text, view.items]) : "";
    if (!view || (view.dismissible && signature === state.dismissedNotice)) {
      ui.banner.hidden = true;
      return;
    }
    ui.banner.hidden = false;
    ui.banner.dataset.tone = view.tone;
    ui.banner.classList.toggle("busy", Boolean(view.busy));
    ui.banner.dataset.signature = signature;
    const text = [...rich(view.text)];
    setChildren(ui.bannerText, text);
    ui.bannerDetail.hidden = !view.detail;
    setChildren(ui.bannerDetail, view.detail ? rich(view.detail) : []);
    ui.bannerList.hidden = !view.items.length;
    setChildren(ui.bannerList, view.items.map((item) => h("li", {}, rich(item))));
    ui.bannerDismiss.hidden = !view.dismissible;
    const hasFraction = typeof view.fraction === "number";
    ui.bannerProgress.hidden = !view.busy;
    ui.bannerProgress.classList.toggle("indeterminate", !hasFraction);
    ui.bannerFill.style.width = hasFraction ? `${(view.fraction * 100).toFixed(1)}%` : "";
  }

  // Rewriting identical text would make screen readers announce it again every poll.
  function setChildren(node, children) {
    const probe = h("div", {}, children);
    if (probe.innerHTML !== node.innerHTML) node.replaceChildren(...probe.childNodes);
  }

  function renderSummary(status) {
    const parts = [`${plural(status.images || 0, "picture", "pictures")} indexed`];
    if (status.failed) parts.push(`${numbers.format(status.failed)} unreadable (see \`wmpd status\`)`);
    if (status.model_id) parts.push(`model ${status.model_id}`);
    if (status.version) parts.push(`wmpd ${status.version}`);
    ui.summary.replaceChildren(...rich(parts.join(" · ")));
  }

  async function pollStatus() {
    clearTimeout(state.statusTimer);
    if (state.statusInFlight) return;
    state.statusInFlight = true;
    let delay = STATUS_IDLE_MS;
    try {
      const status = await api("/api/status");
      const wasDown = state.daemonDown;
      state.daemonDown = false;
      state.status = status;
      renderBanner(describeStatus(status));
      renderSummary(status);
      fillFolderOptions(status.roots);
      delay = status.state === "idle" ? STATUS_IDLE_MS : STATUS_BUSY_MS;
      const ready = status.model_ready !== false;
      if ((wasDown && state.retryWhenUp) || (ready && state.retryWhenReady)) runSearch();
      else if (!hasQuery()) showWelcome();
      if (state.retryWhenReady && !ready) delay = Math.min(delay, STATUS_BUSY_MS);
    } catch (err) {
      if (err.status === 401) return;
      state.daemonDown = err.status === 0;
      renderBanner({
        tone: "error",
        text: state.daemonDown ? "wmpd is not answering — is the daemon running?" : `Status unavailable: ${err.message}`,
        detail: state.daemonDown ? "Start it with `wmpd run` (or `wmpd service install`). Retrying…" : null,
        items: [],
      });
      delay = STATUS_DOWN_MS;
    } finally {
      state.statusInFlight = false;
    }
    if (!document.hidden) state.statusTimer = setTimeout(pollStatus, delay);
  }

  // ---- keyboard -------------------------------------------------------------------------

  function cards() {
    return [...ui.results.children];
  }

  function setActiveCard(card) {
    for (const other of ui.results.querySelectorAll('[tabindex="0"]')) other.setAttribute("tabindex", "-1");
    for (const control of card.querySelectorAll(".card-link, .card-similar")) control.setAttribute("tabindex", "0");
  }

  function focusCard(card) {
    setActiveCard(card);
    card.querySelector(".card-link").focus();
  }

  function gridColumns() {
    const template = getComputedStyle(ui.results).gridTemplateColumns;
    return Math.max(1, template.split(" ").filter(Boolean).length);
  }

  function onGridKeydown(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const card = event.target.closest(".card");
    if (!card) return;
    const all = cards();
    const index = all.indexOf(card);
    const columns = gridColumns();
    let target;
    switch (event.key) {
      case "ArrowRight": target = index + 1; break;
      case "ArrowLeft": target = index - 1; break;
      case "ArrowDown": target = index + columns; break;
      case "ArrowUp": target = index - columns; break;
      case "Home": target = 0; break;
      case "End": target = all.length - 1; break;
      case "m": case "M":
        event.preventDefault();
        moreLikeThis(card, true);
        return;
      default: return;
    }
    event.preventDefault();
    if (target < 0) {
      ui.q.focus();
      return;
    }
    if (target >= all.length) {
      target = all.length - 1;
      loadMore();
    }
    if (target !== index) focusCard(all[target]);
  }

  function onDocumentKeydown(event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "/" && !isTyping(event.target)) {
      event.preventDefault();
      ui.q.focus();
      ui.q.select();
    } else if (event.key === "Escape") {
      if (!ui.help.hidden) {
        toggleHelp(false);
        ui.helpToggle.focus();
      } else if (document.body.classList.contains("dragging")) {
        endDrag();
      } else {
        event.preventDefault();
        clearAll();
      }
    }
  }

  function onSearchKeydown(event) {
    if (event.key === "ArrowDown" && ui.results.firstElementChild) {
      event.preventDefault();
      focusCard(ui.results.querySelector('.card-link[tabindex="0"]')?.closest(".card") || ui.results.firstElementChild);
    } else if (event.key === "Backspace" && !ui.q.value && (state.example || state.similar)) {
      removeChip();
    }
  }

  // ---- help popover ---------------------------------------------------------------------

  function toggleHelp(open = ui.help.hidden) {
    ui.help.hidden = !open;
    ui.helpToggle.setAttribute("aria-expanded", String(open));
  }

  // ---- drag and drop, paste, file picker ------------------------------------------------

  let dragDepth = 0;

  function carriesPicture(event) {
    const types = [...(event.dataTransfer?.types || [])];
    return types.includes("Files") || types.includes("text/uri-list");
  }

  function endDrag() {
    dragDepth = 0;
    document.body.classList.remove("dragging");
  }

  function onDrop(event) {
    if (!carriesPicture(event)) return;
    event.preventDefault();
    endDrag();
    const file = [...event.dataTransfer.files][0];
    if (file) {
      useExample(file);
      return;
    }
    // A result dragged from this page: search for pictures like it.
    const uri = (event.dataTransfer.getData("text/uri-list") || "").split(/\r?\n/).find((l) => l && !l.startsWith("#"));
    try {
      const url = new URL(uri, window.location.href);
      const match = url.pathname.match(/^\/(?:thumb|file)\/(\d+)$/);
      if (url.origin === window.location.origin && match) {
        const card = ui.results.querySelector(`.card[data-id="${match[1]}"]`) ||
          h("li", { "data-id": match[1] });
        moreLikeThis(card, false);
        return;
      }
    } catch (err) {
      // not a URL: fall through to the explanation
    }
    showFieldError("drop the picture file itself: wmpd does not fetch pictures from other sites.", "image");
  }

  function wireDragAndDrop() {
    document.addEventListener("dragenter", (event) => {
      if (!carriesPicture(event)) return;
      dragDepth += 1;
      document.body.classList.add("dragging");
    });
    document.addEventListener("dragover", (event) => {
      if (!carriesPicture(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    document.addEventListener("dragleave", (event) => {
      if (!carriesPicture(event)) return;
      dragDepth = Math.max(0, dragDepth - 1);
      if (dragDepth === 0) endDrag();
    });
    document.addEventListener("drop", onDrop);
    document.addEventListener("dragend", endDrag);
    document.addEventListener("paste", (event) => {
      const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
      if (!file) return; // ordinary text paste into a field
      event.preventDefault();
      useExample(file, "Pasted picture");
    });
    ui.pickImage.addEventListener("click", () => ui.imageInput.click());
    ui.imageInput.addEventListener("change", () => {
      const file = ui.imageInput.files && ui.imageInput.files[0];
      if (file) useExample(file);
      ui.imageInput.value = ""; // picking the same file again must fire `change` again
    });
  }

  // ---- start ----------------------------------------------------------------------------

  function readUrl() {
    const params = new URLSearchParams(window.location.search);
    ui.q.value = params.get("q") || "";
    ui.folder.value = params.get("folder") || "";
    ui.after.value = params.get("after") || "";
    ui.before.value = params.get("before") || "";
    ui.type.value = params.get("type") || "";
    const similar = Number(params.get("similar"));
    if (Number.isInteger(similar) && similar > 0) {
      state.similar = { id: similar, label: `picture ${similar}` };
      labelSimilarFromCatalog(similar);
    }
    if (filterEntries().length) openFilters(true);
  }

  function wire() {
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      runSearch();
    });
    ui.q.addEventListener("input", () => scheduleSearch());
    ui.q.addEventListener("keydown", onSearchKeydown);
    ui.chipRemove.addEventListener("click", removeChip);
    ui.helpToggle.addEventListener("click", () => toggleHelp());
    document.addEventListener("click", (event) => {
      if (!ui.help.hidden && !ui.help.contains(event.target) && !ui.helpToggle.contains(event.target)) {
        toggleHelp(false);
      }
    });
    ui.folder.addEventListener("input", () => onFilterChange(FOLDER_DEBOUNCE_MS));
    for (const input of [ui.after, ui.before, ui.type]) input.addEventListener("change", () => onFilterChange(0));
    ui.filtersClear.addEventListener("click", clearFilters);
    ui.filtersToggle.addEventListener("click", () => openFilters(!ui.filters.classList.contains("open")));
    ui.loadMore.addEventListener("click", () => loadMore({ manual: true }));
    ui.results.addEventListener("keydown", onGridKeydown);
    ui.results.addEventListener("focusin", (event) => {
      const card = event.target.closest(".card");
      if (card) setActiveCard(card);
    });
    ui.bannerDismiss.addEventListener("click", () => {
      state.dismissedNotice = ui.banner.dataset.signature || "";
      ui.banner.hidden = true;
    });
    document.addEventListener("keydown", onDocumentKeydown);
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) clearTimeout(state.statusTimer);
      else pollStatus();
    });
    if ("IntersectionObserver" in window) {
      const observer = new IntersectionObserver(
        (entries) => { if (entries.some((entry) => entry.isIntersecting)) loadMore(); },
        { rootMargin: `0px 0px ${PREFETCH_MARGIN_PX}px 0px` },
      );
      observer.observe(ui.sentinel);
    }
    wireDragAndDrop();
    narrowScreen.addEventListener("change", renderChip);
  }

  wire();
  readUrl();
  updateFilterBadge();
  renderChip();
  runSearch();
  pollStatus();
})();
