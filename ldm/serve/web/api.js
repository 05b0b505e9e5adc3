// The server's /sdapi/v1 routes, and what the page says when the connection to them is lost.
// A request that fails for want of a connection shows a banner and starts pinging the server until it answers.

const banner = () => document.getElementById("connection");
const reconnected = [];
let retrying = null;

export class ApiError extends Error {
  // An answer the server gave: `status` and its `detail` (A1111's error JSON), in words.
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export class ConnectionLost extends Error {}

export function onReconnect(callback) {
  reconnected.push(callback);
}

export async function call(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch("/sdapi/v1" + path, options);
  } catch {
    lost();
    throw new ConnectionLost("the connection to the server was lost");
  }
  const text = await response.text();
  const answer = text ? parse(text) : null;
  if (!response.ok) {
    throw new ApiError(response.status, describe(response, answer, text));
  }
  return answer;
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function describe(response, answer, text) {
  const detail = (answer && (answer.detail || answer.error)) || text || response.statusText;
  if (response.status === 401) return "the server wants a user name and password: reload the page to sign in";
  if (response.status === 503) {
    const after = response.headers.get("Retry-After");
    return `${detail}${after ? ` (try again in ${after} s)` : ""}`;
  }
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

function lost() {
  const el = banner();
  el.textContent = "Lost the connection to the server; retrying…";
  el.className = "lost";
  el.hidden = false;
  if (!retrying) retrying = setTimeout(ping, 1000);
}

async function ping() {
  try {
    const response = await fetch("/sdapi/v1/progress?skip_current_image=true");
    if (!response.ok && response.status !== 401) throw new Error(String(response.status));
  } catch {
    retrying = setTimeout(ping, 2000);
    return;
  }
  retrying = null;
  const el = banner();
  el.textContent = "Connected again.";
  el.className = "back";
  setTimeout(() => {
    if (!retrying) el.hidden = true;
  }, 3000);
  for (const callback of reconnected) callback();
}
