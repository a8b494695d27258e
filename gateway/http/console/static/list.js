// The conversations page: newest activity first, a page at a time (the API's `after` cursor), or the results
// of a search (`?q=`), each with the snippets of its matching messages highlighted.

import * as api from "./api.js";
import { attempt, go } from "./ui.js";
import { clear, count, h, highlighted, money, when } from "./dom.js";

const PAGE = 20;
// Where the list is: a search (of a key and tenant), and a stack of the cursors of the pages before this one
// (Previous pops it).
let place = { q: null, key: null, tenant: null, after: null, before: [] };

export async function listPage(view, q, current) {
  const search = view.querySelector("#q");
  if (document.activeElement !== search) search.value = q;
  const { key, tenant } = api.session;
  if (place.q !== q || place.key !== key || place.tenant !== tenant) {
    place = { q, key, tenant, after: null, before: [] };
  }
  const results = view.querySelector(".results");
  results.setAttribute("aria-busy", "true");
  let page;
  try {
    page = await api.json("GET", "/conversations", { query: { limit: PAGE, q, after: place.after } });
  } finally {
    results.removeAttribute("aria-busy");
  }
  if (!current()) return;
  clear(results).append(page.data.length ? table(page.data) : empty(q));
  const pager = view.querySelector(".pager");
  pager.querySelector(".previous").disabled = !place.before.length;
  pager.querySelector(".next").disabled = !page.has_more;
  pager.dataset.last = page.last_id || "";
  view.querySelector(".tally").textContent = tally(page.data.length, q);
}

function tally(shown, q) {
  const where = api.session.tenant ? ` of tenant ${api.session.tenant}` : "";
  const page = place.before.length ? `, page ${place.before.length + 1}` : "";
  if (q) return `${shown} matching “${q}”${where}${page}`;
  return `${shown} conversation${shown === 1 ? "" : "s"}${where}${page}`;
}

function empty(q) {
  return h("p", { class: "empty" }, q ? `No conversation holds every word of “${q}”.` : "No conversations yet.");
}

function table(conversations) {
  const costs = new IntersectionObserver(loadCosts, { rootMargin: "200px" });
  const body = h("tbody");
  for (const c of conversations) {
    const open = `#/c/${encodeURIComponent(c.id)}`;
    const cost = h("td", { class: "num cost", "data-id": c.id }, "…");
    costs.observe(cost);
    body.append(
      h(
        "tr",
        { class: "conversation", "data-id": c.id },
        h("td", { class: "id" }, h("a", { href: open }, c.id), tags(c.metadata)),
        h("td", { class: "model" }, c.model || "—"),
        h("td", { class: "num" }, count(c.message_count)),
        h("td", { class: "num tokens" }, tokens(c.usage)),
        cost,
        h("td", { class: "when" }, when(c.updated_at)),
      ),
    );
    if (c.matches && c.matches.length) body.append(matches(c, open));
  }
  return h(
    "table",
    { class: "conversations" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Conversation"),
        h("th", { scope: "col" }, "Model"),
        h("th", { scope: "col", class: "num" }, "Messages"),
        h("th", { scope: "col", class: "num" }, "Tokens", h("small", {}, "in / out / cached")),
        h("th", { scope: "col", class: "num" }, "Cost"),
        h("th", { scope: "col" }, "Last activity"),
      ),
    ),
    body,
  );
}

export function tags(metadata) {
  const entries = Object.entries(metadata || {});
  if (!entries.length) return null;
  return h("span", { class: "tags" }, entries.map(([key, value]) => h("span", { class: "tag" }, `${key}: ${value}`)));
}

export function tokens(usage) {
  const u = usage || {};
  return h(
    "span",
    { title: `${u.prompt_tokens || 0} prompt, ${u.completion_tokens || 0} completion, ${u.cached_tokens || 0} cached` },
    `${count(u.prompt_tokens)} / ${count(u.completion_tokens)} / ${count(u.cached_tokens)}`,
  );
}

function matches(conversation, open) {
  const items = conversation.matches.map((m) =>
    h(
      "li",
      {},
      h("span", { class: `role role-${roleClass(m.role)}` }, m.role),
      h("a", { class: "snippet", href: `${open}?m=${encodeURIComponent(m.id)}` }, highlighted(m.snippet, m.highlights)),
    ),
  );
  return h("tr", { class: "matches", "data-id": conversation.id }, h("td", { colspan: 6 }, h("ul", {}, items)));
}

export function roleClass(role) {
  return ["user", "assistant", "tool", "system", "developer"].includes(role) ? role : "other";
}

// Each conversation's cost is another request (GET one conversation): made only for rows that come into view.
function loadCosts(entries, observer) {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    observer.unobserve(entry.target);
    const cell = entry.target;
    api
      .json("GET", api.conversationPath(cell.dataset.id))
      .then((c) => {
        cell.textContent = c.cost && c.cost.turns ? money(c.cost.billed_cost, c.cost.currency) : "—";
      })
      .catch(() => {
        cell.textContent = "?";
      });
  }
}

export function wireList(view) {
  view.querySelector("#search").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = view.querySelector("#q").value.trim();
    go(q ? `#/?q=${encodeURIComponent(q)}` : "#/");
  });
  view.querySelector(".previous").addEventListener("click", () => {
    place.after = place.before.pop() ?? null;
    attempt(() => listPage(view, place.q, () => true));
  });
  view.querySelector(".next").addEventListener("click", () => {
    const last = view.querySelector(".pager").dataset.last;
    if (!last) return;
    place.before.push(place.after);
    place.after = last;
    attempt(() => listPage(view, place.q, () => true));
  });
}
