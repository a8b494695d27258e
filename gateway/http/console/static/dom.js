// Building the page: elements from code, and every piece of data inserted as text (DOM text nodes), never as
// HTML, so that whatever a message holds (<img onerror=...>, markdown, JSON) shows as the characters it is.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// The snippet with each [start, end) range (code points, as the API counts them) in a <mark>.
export function highlighted(text, ranges) {
  const points = Array.from(text);
  const out = document.createDocumentFragment();
  let at = 0;
  for (const [start, end] of [...(ranges || [])].sort((a, b) => a[0] - b[0])) {
    const from = Math.max(start, at);
    if (end <= from) continue; // inside a range already marked
    out.append(points.slice(at, from).join(""), h("mark", {}, points.slice(from, end).join("")));
    at = end;
  }
  out.append(points.slice(at).join(""));
  return out;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const STEPS = [
  [60, "second"],
  [60, "minute"],
  [24, "hour"],
  [30, "day"],
  [12, "month"],
  [Infinity, "year"],
];

export function ago(seconds) {
  let value = seconds - Date.now() / 1000;
  for (const [size, unit] of STEPS) {
    if (Math.abs(value) < size) return relative.format(Math.round(value), unit);
    value /= size;
  }
  return "";
}

export function when(seconds) {
  const at = new Date(seconds * 1000);
  return h("time", { datetime: at.toISOString(), title: at.toLocaleString() }, ago(seconds));
}

const integer = new Intl.NumberFormat();

export function count(n) {
  return integer.format(n || 0);
}

export function money(amount, currency) {
  if (amount === null || amount === undefined || !currency) return "no price";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency, maximumFractionDigits: 6 }).format(amount);
  } catch {
    return `${amount.toFixed(6)} ${currency}`; // not an ISO 4217 code Intl knows
  }
}

// A message's text: a string, or the text of each part of an array (other parts named in brackets).
export function contentText(content) {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return JSON.stringify(content);
  return content
    .map((part) => {
      if (part && typeof part.text === "string") return part.text;
      if (part && part.type === "image_url") return `[image: ${part.image_url?.url ?? ""}]`;
      return `[${part?.type ?? "part"}]`;
    })
    .join("\n");
}

// Tool-call arguments are a JSON string: shown indented when they parse, as sent when they do not.
export function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return String(text ?? "");
  }
}
