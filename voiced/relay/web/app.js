// The page: the orb, the state in words (an aria-live region), the last three lines,
// the mic button, the voice picker, the transcript view and the token, kept in
// localStorage. Talks to the relay through voice.js; reads the relay's two JSON
// endpoints with the same token.

import { VoiceClient } from "./voice.js";

const TOKEN_KEY = "voiced.token";
const VOICE_KEY = "voiced.voice";
const TOKEN_RE = /^[A-Za-z0-9!#$%&'*+.^_`|~-]{8,200}$/; // a token a subprotocol can carry
const STATUS = {
  idle: "Disconnected",
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  ready: "Connected. Press the mic to talk.",
  listening: "Listening…",
  speaking: "Speaking…",
  unauthorized: "This browser needs a device token.",
};

const $ = (id) => document.getElementById(id);
const meta = (name) => {
  const el = document.querySelector(`meta[name="${name}"]`);
  return el ? el.content : "";
};
const params = new URLSearchParams(location.search);
const agentId = params.get("agent_id") || meta("voiced-agent");
const relayPath = meta("voiced-relay-path") || "/v1/realtime";
const wsUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${relayPath}`;
const conversationKey = `voiced.conversation.${agentId}`;
const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");

let client = null;
const lines = []; // {item, role, text}

// ------------------------------------------------------------------ storage

function store(kind, key, value) {
  try {
    const s = kind === "local" ? localStorage : sessionStorage;
    if (value === null) s.removeItem(key);
    else s.setItem(key, value);
  } catch (e) { /* storage disabled: the page still works for this visit */ }
}

function load(kind, key) {
  try {
    return (kind === "local" ? localStorage : sessionStorage).getItem(key);
  } catch (e) {
    return null;
  }
}

// ------------------------------------------------------------------ the relay's JSON

async function api(path) {
  const token = load("local", TOKEN_KEY);
  const r = await fetch(new URL(`api/${path}`, location.href), {
    headers: { Authorization: `Bearer ${token}` }, cache: "no-store",
    credentials: "omit", referrerPolicy: "no-referrer",
  });
  let body = null;
  try { body = await r.json(); } catch (e) { /* not JSON */ }
  return { status: r.status, body };
}

async function checkConnection(c) {
  try {
    const r = await api(`agent?agent_id=${encodeURIComponent(agentId)}`);
    if (r.status === 401) return "unauthorized";
    if (r.status === 200 && c.conversationId) {
      const t = await api(`conversations/${encodeURIComponent(c.conversationId)}?limit=1`);
      if (t.status === 404) return "conversation-gone";
    }
  } catch (e) { /* offline: try again later */ }
  return "retry";
}

// ------------------------------------------------------------------ rendering

function showState(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text || STATUS[state] || state;
  const mic = $("mic");
  const live = ["ready", "listening", "speaking"].includes(state);
  mic.disabled = !live;
  const on = client !== null && client.streaming;
  mic.setAttribute("aria-pressed", on ? "true" : "false");
  mic.setAttribute("aria-label", on ? "Stop talking" : "Start talking");
  updateStop();
  if (state !== "listening" && state !== "speaking") setLevel(0);
}

function updateStop() {
  // the interrupt button: while the reply plays, or while one is being made
  const live = client !== null && ["ready", "listening", "speaking"].includes(client.state);
  $("stop").hidden = !(live && (client.state === "speaking" || client.responseActive));
}

function setLevel(value) {
  if (reducedMotion.matches) return;
  const v = Math.min(1, Math.sqrt(Math.max(0, value)) * 2.2);
  $("orb").style.setProperty("--level", v.toFixed(3));
}

function who(role) {
  const span = document.createElement("span");
  span.className = "who";
  span.textContent = role === "user" ? "You:" : "Assistant:";
  return span;
}

function addLine(d) {
  let line = lines.find((l) => l.item === d.item && l.role === d.role);
  if (!line) {
    line = { item: d.item, role: d.role, text: "", final: false };
    const last = lines[lines.length - 1];
    if (d.role === "user" && last && last.role === "assistant" && !last.final) {
      // the transcription often ends after the reply has begun: the words came first
      lines.splice(lines.length - 1, 0, line);
    } else {
      lines.push(line);
    }
  }
  line.text = d.final ? d.text : line.text + d.text;
  line.final = line.final || d.final;
  while (lines.length > 3) lines.shift();
  const ol = $("lines");
  ol.replaceChildren(...lines.map((l) => {
    const li = document.createElement("li");
    li.className = l.role;
    li.append(who(l.role), document.createTextNode(l.text));
    return li;
  }));
}

// ------------------------------------------------------------------ the token

function askToken(refused) {
  showState("token", refused ? "The relay refused this token." : STATUS.unauthorized);
  $("token-error").textContent = refused
    ? "The relay refused this token: check it, or make a new one with voiced relay add-device."
    : "";
  $("token").value = "";
  const dlg = $("token-dialog");
  if (!dlg.open) dlg.showModal();
  $("token").focus();
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  if (!TOKEN_RE.test(token)) {
    $("token-error").textContent = "That does not look like a device token.";
    return;
  }
  store("local", TOKEN_KEY, token);
  $("token-dialog").close();
  start();
});

$("token-dialog").addEventListener("cancel", (e) => {
  if (!load("local", TOKEN_KEY)) e.preventDefault(); // nothing to do without one
});

$("forget").addEventListener("click", () => {
  if (client) client.disconnect();
  client = null;
  store("local", TOKEN_KEY, null);
  store("session", conversationKey, null);
  lines.length = 0;
  $("lines").replaceChildren();
  askToken(false);
});

// ------------------------------------------------------------------ controls

$("mic").addEventListener("click", async () => {
  if (!client) return;
  if (client.streaming) {
    client.stopStreaming();
    return;
  }
  try {
    await client.startStreaming();
  } catch (e) {
    showState(client.state, `The microphone is not available (${e.name || e}).`);
  }
});

$("stop").addEventListener("click", () => { if (client) client.interrupt("button"); });

document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && client && client.state === "speaking" && !$("history-dialog").open) {
    client.interrupt("button");
  }
});

$("voice").addEventListener("change", () => {
  const v = $("voice").value;
  store("local", VOICE_KEY, v);
  if (client) {
    client.voice = v;
    client.reconnect(); // the same conversation, in the new voice
  }
});

// ------------------------------------------------------------------ the transcript view

function formatTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit",
                                                                       minute: "2-digit" });
}

async function showHistory() {
  const dlg = $("history-dialog");
  const list = $("history-list");
  const status = $("history-status");
  list.replaceChildren();
  if (!dlg.open) dlg.showModal();
  $("history-close").focus();
  const cid = client && client.conversationId;
  if (!cid) {
    status.textContent = "Nothing has been said yet.";
    return;
  }
  status.textContent = "Loading…";
  let r;
  try {
    r = await api(`conversations/${encodeURIComponent(cid)}`);
  } catch (e) {
    status.textContent = "The relay could not be reached.";
    return;
  }
  if (r.status !== 200 || !r.body || !Array.isArray(r.body.messages)) {
    status.textContent = (r.body && r.body.error) || `The relay answered ${r.status}.`;
    return;
  }
  const msgs = r.body.messages;
  status.textContent = msgs.length
    ? `${msgs.length} message${msgs.length === 1 ? "" : "s"}${r.body.more ? " (the latest)" : ""}`
    : "Nothing has been said yet.";
  list.replaceChildren(...msgs.map((m) => {
    const li = document.createElement("li");
    li.className = m.role === "user" ? "user" : "assistant";
    li.append(who(li.className), document.createTextNode(String(m.content)));
    const small = document.createElement("span");
    small.className = "meta";
    let note = formatTime(m.created_at);
    if (m.interrupted) {
      note += typeof m.heard_ms === "number"
        ? ` · interrupted after ${(m.heard_ms / 1000).toFixed(1)} s` : " · interrupted";
    }
    small.textContent = note;
    li.append(small);
    return li;
  }));
}

$("history").addEventListener("click", showHistory);
$("history-close").addEventListener("click", () => $("history-dialog").close());

// ------------------------------------------------------------------ start

async function start() {
  if (!agentId) {
    showState("error", "No agent: open this page with ?agent_id=… in its address.");
    return;
  }
  const token = load("local", TOKEN_KEY);
  if (!token) {
    askToken(false);
    return;
  }
  showState("connecting");
  let r = null;
  for (let attempt = 0; r === null; attempt++) {
    try {
      r = await api(`agent?agent_id=${encodeURIComponent(agentId)}`);
    } catch (e) {
      await new Promise((ok) => setTimeout(ok, Math.min(15, 2 ** attempt) * 1000));
    }
  }
  if (r.status === 401) {
    askToken(true);
    return;
  }
  if (r.status !== 200 || !r.body) {
    showState("error", (r.body && r.body.error) || `The relay answered ${r.status}.`);
    return;
  }
  const voices = Array.isArray(r.body.voices) ? r.body.voices : [];
  const saved = load("local", VOICE_KEY);
  const voice = voices.includes(saved) ? saved : r.body.voice;
  const select = $("voice");
  select.replaceChildren(...voices.map((v) => {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = v[0].toUpperCase() + v.slice(1);
    return o;
  }));
  select.value = voice;
  select.disabled = voices.length < 2;
  select.hidden = document.querySelector("label[for=voice]").hidden = voices.length === 0;

  client = new VoiceClient({
    url: wsUrl, token, agentId, voice,
    conversationId: load("session", conversationKey), check: checkConnection,
  });
  client.addEventListener("state", (e) => {
    if (e.detail.state === "unauthorized") askToken(true);
    else showState(e.detail.state);
  });
  client.addEventListener("conversation", (e) => store("session", conversationKey, e.detail.id));
  client.addEventListener("transcript", (e) => addLine(e.detail));
  client.addEventListener("response", updateStop);
  client.addEventListener("level", (e) => setLevel(e.detail.value));
  client.addEventListener("servererror", (e) => {
    console.warn("relay error:", e.detail.error.code, e.detail.error.message);
  });
  window.voiced = client; // for the browser's console (and the tests)
  await client.connect();
}

start();
