// The console's entry: sign-in and sign-out, the admin's tenant field, and the routes, which live in the URL's
// fragment (#/, #/?q=words, #/c/<id>): ids and search words may be in a URL, the key never is.

import * as api from "./api.js";
import { conversationPage } from "./conversation.js";
import { clear, h } from "./dom.js";
import { listPage, wireList } from "./list.js";
import { arrive, attempt, go, later, places, say } from "./ui.js";

const $ = (selector) => document.querySelector(selector);
const views = { signin: $("#signin"), list: $("#list"), conversation: $("#conversation") };
let navigations = 0; // the latest navigation's number: what arrives for an earlier one is dropped

function show(name) {
  for (const [key, view] of Object.entries(views)) view.hidden = key !== name;
  $("#account").hidden = name === "signin";
}

function signOut(message) {
  api.signOut();
  clear(views.list.querySelector(".results"));
  clear(views.conversation);
  showTenant();
  show("signin");
  say(message || "");
  $("#key").value = "";
  $("#key").focus();
}

function showTenant() {
  $("#tenant-form").hidden = !api.session.admin;
  $("#tenant").value = api.session.tenant;
  clear($("#tenants")).append(...api.session.tenants.map((name) => h("option", { value: name })));
}

async function route() {
  const navigation = ++navigations;
  const current = () => navigation === navigations;
  if (!api.session.key) {
    show("signin");
    return;
  }
  arrive();
  const hash = location.hash.replace(/^#/, "") || "/";
  if (hash.startsWith("/c/")) {
    const [encoded, query = ""] = hash.slice(3).split("?");
    show("conversation");
    const focus = new URLSearchParams(query).get("m");
    await attempt(() => conversationPage(views.conversation, decodeURIComponent(encoded), focus, current));
    return;
  }
  show("list");
  places.list = `#${hash}`;
  const q = new URLSearchParams(hash.split("?")[1] || "").get("q") || "";
  await attempt(() => listPage(views.list, q, current));
}

$("#signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("#key").value.trim();
  if (!key) return;
  const button = event.target.querySelector("button");
  button.disabled = true;
  try {
    await api.signIn(key);
    $("#key").value = "";
    say("");
    showTenant();
    go(location.hash || "#/");
  } catch (error) {
    const invalid = error instanceof api.ApiError && error.status === 401;
    say(invalid ? "The gateway does not accept this key." : error.message, "error");
  } finally {
    button.disabled = false;
  }
});

$("#signout").addEventListener("click", () => signOut("Signed out."));

$("#tenant-form").addEventListener("submit", (event) => {
  event.preventDefault();
  api.setTenant($("#tenant").value.trim());
  showTenant();
  later(api.session.tenant ? `Viewing tenant ${api.session.tenant}.` : "Viewing your own tenant.");
  go("#/");
});

document.addEventListener("unauthorized", () => signOut("The gateway no longer accepts this key: sign in again."));
window.addEventListener("hashchange", route);
wireList(views.list);
showTenant();
route();
