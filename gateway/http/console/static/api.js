// The gateway's public API, called with the signed-in key.  The key is kept in this module and in the tab's
// sessionStorage only (gone when the tab closes): never in a URL, a cookie or localStorage.  An admin key may
// name a tenant, which every call then carries as ?tenant=NAME.

const STORED = "gateway-console";

// The API beside the console: the gateway that served this page, under whatever prefix a proxy mounts it.
export const API = location.pathname.replace(/\/ui(\/.*)?$/, "") + "/v1";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `The gateway answered ${status}.`);
    this.status = status;
    this.code = error.code || null;
  }
}

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(STORED)) || {};
  } catch {
    return {};
  }
}

export const session = { key: null, admin: false, tenant: "", tenants: [], ...load() };

function save() {
  try {
    sessionStorage.setItem(STORED, JSON.stringify(session));
  } catch {
    // Storage refused (a private window's quota): the key stays in memory for this page only.
  }
}

export function signOut() {
  Object.assign(session, { key: null, admin: false, tenant: "", tenants: [] });
  try {
    sessionStorage.removeItem(STORED);
  } catch {
    // nothing was stored
  }
}

export function setTenant(tenant) {
  session.tenant = tenant;
  if (tenant && !session.tenants.includes(tenant)) session.tenants.push(tenant);
  save();
}

export const conversationPath = (id) => `/conversations/${encodeURIComponent(id)}`;

async function request(key, method, path, { query = {}, body, tenant = session.tenant } = {}) {
  const url = new URL(API + path, location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  if (tenant) url.searchParams.set("tenant", tenant);
  const headers = { Authorization: `Bearer ${key}` };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return response;
}

export async function call(method, path, options) {
  return request(session.key, method, path, options);
}

export async function json(method, path, options) {
  return (await call(method, path, options)).json();
}

// Signs in when the key lists conversations; an admin key is one that may name a tenant (any valid name does:
// the gateway has no list of tenants to ask).
export async function signIn(key) {
  await request(key, "GET", "/conversations", { query: { limit: 1 }, tenant: "" });
  let admin = false;
  try {
    await request(key, "GET", "/conversations", { query: { limit: 1 }, tenant: "default" });
    admin = true;
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 403) throw error;
  }
  Object.assign(session, { key, admin, tenant: "", tenants: [] });
  save();
}

// Every message of a conversation, in order, a page of 100 at a time.
export async function allMessages(id) {
  const messages = [];
  let after;
  for (;;) {
    const page = await json("GET", `${conversationPath(id)}/messages`, { query: { limit: 100, order: "asc", after } });
    messages.push(...page.data);
    if (!page.has_more || !page.data.length) return messages;
    after = page.last_id;
  }
}

// The export as a file download: fetched with the key (a link could not carry it), then saved from a Blob.
export async function download(id, format) {
  const response = await call("GET", `${conversationPath(id)}/export`, { query: { format } });
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") || "";
  const named = /filename="([^"]+)"/.exec(disposition);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = named ? named[1] : `${id.replace(/[^\w.-]+/g, "_")}.${format === "openai" ? "json" : "jsonl"}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}
