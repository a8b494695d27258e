// What every page shares: the notice line, navigation, and running an API action with its error shown.

import { ApiError } from "./api.js";
import { clear } from "./dom.js";

export function say(text, kind = "info") {
  const notice = document.querySelector("#notice");
  notice.className = `notice ${kind}`;
  notice.setAttribute("role", kind === "error" ? "alert" : "status");
  clear(notice).append(text);
  notice.hidden = !text;
}

// Where the list was last (its search), for the conversation page's way back.
export const places = { list: "#/" };

let pending = "";

// A notice for the page navigated to next (what an action did, once its page shows).
export function later(text) {
  pending = text;
}

// At each navigation: the pending notice, or none (a page's errors are shown after this).
export function arrive() {
  say(pending);
  pending = "";
}

// To a route (a fragment); to the same one again reloads it.
export function go(hash) {
  const same = location.hash === hash || (hash === "#/" && !location.hash);
  if (same) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}

// Runs an action, showing its error; a key the gateway stopped accepting (revoked, or keys mode switched on)
// signs out (app.js listens for "unauthorized").
export async function attempt(action) {
  try {
    return await action();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) document.dispatchEvent(new Event("unauthorized"));
    else say(error.message || String(error), "error");
    return undefined;
  }
}
