// One conversation: its facts and cost, every message in order (text as text, reasoning folded, each tool call
// beside its result, interrupted replies marked, the context window's cut and summary where they apply), and
// the actions: export, fork at a message, rewind, delete.

import * as api from "./api.js";
import { clear, contentText, count, h, money, prettyJson, when } from "./dom.js";
import { roleClass, tags, tokens } from "./list.js";
import { attempt, go, later, places } from "./ui.js";

const INTERRUPTED = "Cut off before it finished (the client hung up, or the stream failed): what arrived is kept.";

export async function conversationPage(view, id, focus, current) {
  clear(view).append(h("p", { class: "loading" }, "Loading…"));
  let conversation, messages;
  try {
    [conversation, messages] = await Promise.all([api.json("GET", api.conversationPath(id)), api.allMessages(id)]);
  } catch (error) {
    if (current()) clear(view).append(h("a", { class: "back", href: places.list }, "← Conversations"));
    throw error; // shown as the notice
  }
  if (!current()) return;
  clear(view).append(head(conversation), h("div", { class: "messages" }, transcript(conversation, messages)));
  const focused = focus && view.querySelector(`[data-id="${CSS.escape(focus)}"]`);
  if (focused) {
    focused.classList.add("focused");
    focused.scrollIntoView({ block: "center" });
  }
}

function head(c) {
  const cost = c.cost || {};
  const forkedFrom = c.metadata && c.metadata.forked_from;
  const facts = [
    ["Model", c.model || "—"],
    ["Messages", count(c.message_count)],
    ["Tokens", tokens(c.usage)],
    ["Cost", costLine(cost)],
    ["Created", when(c.created_at)],
    ["Last activity", when(c.updated_at)],
  ];
  if (forkedFrom) facts.push(["Forked from", h("a", { href: `#/c/${encodeURIComponent(forkedFrom)}` }, forkedFrom)]);
  return h(
    "div",
    { class: "conversation-head" },
    h("a", { class: "back", href: places.list }, "← Conversations"),
    h("h1", { class: "conversation-id" }, c.id),
    tags(c.metadata),
    h("dl", { class: "facts" }, facts.map(([name, value]) => h("div", {}, h("dt", {}, name), h("dd", {}, value)))),
    h(
      "div",
      { class: "actions" },
      button("export", "Export JSONL", () => attempt(() => api.download(c.id, "jsonl"))),
      button("export", "Export OpenAI", () => attempt(() => api.download(c.id, "openai"))),
      button("rewind", "Rewind last turn", () => rewind(c.id)),
      button("delete danger", "Delete", () => remove(c.id)),
    ),
  );
}

function button(kind, label, onclick) {
  return h("button", { type: "button", class: kind, onclick }, label);
}

function costLine(cost) {
  if (!cost.turns) return cost.unmetered_turns ? "not metered (cut before its usage arrived)" : "no replies";
  const billed = money(cost.billed_cost, cost.currency);
  const saved = cost.saved_cost > 0 ? ` (saved ${money(cost.saved_cost, cost.currency)})` : "";
  return `${billed}${saved} over ${cost.turns} repl${cost.turns === 1 ? "y" : "ies"}`;
}

function transcript(c, messages) {
  const context = c.context || { window_start: 0, summary: null };
  const results = new Map();
  for (const m of messages) if (m.role === "tool" && m.tool_call_id) results.set(m.tool_call_id, m);
  const paired = new Set(); // results shown beside their call, not again on their own
  for (const m of messages) {
    for (const call of m.tool_calls || []) if (results.has(call.id)) paired.add(results.get(call.id));
  }
  const out = [];
  messages.forEach((m, index) => {
    if (index === context.window_start && index > 0) out.push(cut(context));
    if (!paired.has(m)) out.push(message(c.id, m, results));
  });
  if (context.window_start > 0 && context.window_start >= messages.length) out.push(cut(context));
  if (!messages.length) out.push(h("p", { class: "empty" }, "No messages."));
  return out;
}

function cut(context) {
  return h(
    "section",
    { class: "cut", "aria-label": "Context window" },
    h("p", { class: "cut-line" }, "Context window starts here: the messages above are no longer sent upstream."),
    context.summary
      ? h(
          "details",
          { class: "summary", open: true },
          h("summary", {}, "Summary sent in their place"),
          h("div", { class: "text" }, context.summary),
        )
      : null,
  );
}

function message(conversationId, m, results) {
  const role = roleClass(m.role);
  const text = contentText(m.content);
  return h(
    "article",
    { class: `message message-${role}`, "data-id": m.id },
    h(
      "header",
      { class: "message-head" },
      h("span", { class: `role role-${role}` }, m.name ? `${m.role} · ${m.name}` : m.role),
      m.interrupted ? h("span", { class: "badge interrupted", title: INTERRUPTED }, "interrupted") : null,
      usage(m),
      h("span", { class: "grow" }),
      h("code", { class: "message-id" }, m.id),
      when(m.created_at),
      forkButton(conversationId, m.id),
    ),
    m.reasoning_content
      ? h(
          "details",
          { class: "reasoning" },
          h("summary", {}, "Reasoning"),
          h("div", { class: "text" }, m.reasoning_content),
        )
      : null,
    text ? h("div", { class: "text" }, text) : null,
    m.tool_calls && m.tool_calls.length
      ? h("div", { class: "calls" }, m.tool_calls.map((call) => toolCall(conversationId, call, results.get(call.id))))
      : null,
    m.role === "tool"
      ? h("p", { class: "muted" }, `Result for call ${m.tool_call_id || "?"}, which no message here makes.`)
      : null,
  );
}

function usage(m) {
  if (!m.usage) return null;
  const u = m.usage;
  const priced = m.cost && m.cost.billed_cost !== null && m.cost.billed_cost !== undefined;
  const cost = priced ? ` · ${money(m.cost.billed_cost, m.cost.currency)}` : "";
  return h("span", { class: "usage" }, `${count(u.prompt_tokens)} in · ${count(u.completion_tokens)} out${cost}`);
}

function toolCall(conversationId, call, result) {
  const fn = call.function || {};
  return h(
    "section",
    { class: "call", "data-call-id": call.id },
    h(
      "div",
      { class: "call-request" },
      h(
        "div",
        { class: "call-head" },
        h("span", { class: "badge" }, "tool call"),
        h("code", { class: "function" }, fn.name || call.type || "?"),
        h("code", { class: "message-id" }, call.id),
      ),
      h("pre", { class: "arguments" }, prettyJson(fn.arguments)),
    ),
    result
      ? h(
          "div",
          { class: "call-result", "data-id": result.id },
          h(
            "div",
            { class: "call-head" },
            h("span", { class: "badge" }, "result"),
            h("code", { class: "message-id" }, result.id),
            h("span", { class: "grow" }),
            forkButton(conversationId, result.id),
          ),
          h("pre", { class: "result-text" }, prettyJson(contentText(result.content))),
        )
      : h("div", { class: "call-result missing" }, "No result stored for this call."),
  );
}

function forkButton(conversationId, messageId) {
  return h(
    "button",
    {
      type: "button",
      class: "fork small",
      title: "A new conversation holding the messages up to and including this one",
      onclick: () =>
        attempt(async () => {
          const body = { at_message_id: messageId };
          const fork = await api.json("POST", `${api.conversationPath(conversationId)}/fork`, { body });
          later(`Forked ${conversationId} at ${messageId} into ${fork.id}.`);
          go(`#/c/${encodeURIComponent(fork.id)}`);
        }),
    },
    "Fork here",
  );
}

function rewind(id) {
  if (!window.confirm(`Remove the last user turn of ${id}, and everything after it?`)) return;
  attempt(async () => {
    await api.json("POST", `${api.conversationPath(id)}/rewind`, { body: { turns: 1 } });
    later("Rewound one turn.");
    go(location.hash);
  });
}

function remove(id) {
  if (!window.confirm(`Delete conversation ${id}? Its messages are gone for good (forks keep their copies).`)) return;
  attempt(async () => {
    await api.json("DELETE", api.conversationPath(id));
    later(`Deleted ${id}.`);
    go(places.list);
  });
}
