// The playground page: a chat on one session of this server. Each turn sends only its new
// message with the session id; the server continues from the session's stored state.
import { Api, ApiError } from "./api.js";
import { drawChart, formatBytes } from "./chart.js";
import { Transcript } from "./transcript.js";
import { streamTurn } from "./turn.js";

const KEY_STORAGE = "retserve.apiKey";
const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), sessionId: $("session-id"), notice: $("notice"),
  newSession: $("new-session"), fork: $("fork-session"), remove: $("delete-session"),
  prompt: $("prompt"), send: $("send"), stop: $("stop"), composer: $("composer"),
  chart: $("memory-chart"), summary: $("memory-summary"), kvPerToken: $("kv-per-token"),
  settings: $("settings"), apiKey: $("api-key"), temperature: $("temperature"),
  topP: $("top-p"), maxTokens: $("max-tokens"), seed: $("seed"),
};
const transcript = new Transcript($("transcript"));
const api = new Api(() => ui.apiKey.value.trim());
const state = {
  cards: new Map(),  // model id -> card from /v1/models
  sessionId: null,
  isStored: false,   // the server holds a state for sessionId (after its first stored turn)
  points: [],        // [{tokens, bytes}] after each stored turn
  controller: null,  // aborts the turn in flight
};

function notify(text, isError = false) {
  ui.notice.textContent = text;
  ui.notice.classList.toggle("error", isError);
}

function newSessionId() {
  // getRandomValues also works on plain http (randomUUID needs a secure context)
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "sess-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function refresh() {
  const busy = state.controller !== null;
  const ready = state.cards.size > 0;
  ui.sessionId.textContent = state.sessionId;
  ui.send.disabled = busy || !ready;
  ui.stop.disabled = !busy;
  ui.fork.disabled = ui.remove.disabled = busy || !state.isStored;
  ui.newSession.disabled = busy;
  ui.model.disabled = busy || !ready;
  const card = state.cards.get(ui.model.value);
  if (!card) return;
  ui.kvPerToken.textContent = formatBytes(card.kv_cache_bytes_per_token);
  drawChart(ui.chart, state.points, card.state_bytes, card.kv_cache_bytes_per_token);
  const last = state.points.at(-1);
  ui.summary.textContent = last
    ? `After ${last.tokens} tokens this conversation is stored in ${formatBytes(last.bytes)}, `
      + `as it was after its first turn. A transformer of the same size would hold `
      + `${formatBytes(last.tokens * card.kv_cache_bytes_per_token)} of KV cache by now `
      + `(computed), and more with every token.`
    : `One conversation's state is ${formatBytes(card.state_bytes)} whatever its length; `
      + `a transformer of the same size adds ${formatBytes(card.kv_cache_bytes_per_token)} `
      + `of KV cache per token (computed).`;
}

async function loadModels() {
  try {
    const { data } = await api.json("GET", "/v1/models");
    const chosen = ui.model.value;
    state.cards = new Map(data.map((card) => [card.id, card]));
    ui.model.replaceChildren(...data.map((card) => new Option(card.id, card.id)));
    if (state.cards.has(chosen)) ui.model.value = chosen;
    notify("");
  } catch (error) {
    state.cards = new Map();
    if (error.status === 401) {
      ui.settings.open = true;
      notify(`This server needs an API key: enter it under Settings. (${error.message})`, true);
    } else if (error.status === 503) {  // loading its model (or draining): ask again soon
      notify(`Waiting for the server: ${error.message}`);
      setTimeout(loadModels, 2000);
    } else {
      notify(`Cannot list the models: ${error.message}`, true);
    }
  }
  refresh();
}

function startSession(message) {
  state.sessionId = newSessionId();
  state.isStored = false;
  state.points = [];
  transcript.clear();
  if (message) notify(message);
  refresh();
}

function sampling() {
  const number = (input) => (input.value.trim() === "" ? undefined : Number(input.value));
  return { temperature: number(ui.temperature), top_p: number(ui.topP),
           max_tokens: number(ui.maxTokens), seed: number(ui.seed) };
}

async function send() {
  const content = ui.prompt.value;
  if (!content.trim() || ui.send.disabled) return;
  ui.prompt.value = "";
  const model = ui.model.value;
  const view = transcript.add(content, model);
  state.controller = new AbortController();
  refresh();
  const body = { model, messages: [{ role: "user", content }], session_id: state.sessionId,
                 stream: true, stream_options: { include_usage: true }, ...sampling() };
  let result = null;
  try {
    result = await streamTurn(api, body, state.controller.signal, (t) => view.show(t));
  } catch (error) {
    view.failed(error.message);
    if (error instanceof ApiError && error.status === 401) await loadModels();
  } finally {
    // the turn is over once its stream is: the next message may go while its state is read
    // (a message sent in between was dropped while Send stayed disabled)
    state.controller = null;
    refresh();
    ui.prompt.focus();
  }
  if (result === null) return;
  if (result.stopped) {
    view.stopped(result);
  } else {
    view.finish(result);
    await recordState();
    refresh();
  }
}

// The session as stored after a turn: one more point on the chart.
async function recordState() {
  try {
    const session = await api.json("GET", `/v1/sessions/${encodeURIComponent(state.sessionId)}`);
    state.isStored = true;
    state.points.push({ tokens: session.num_tokens, bytes: session.num_bytes });
  } catch (error) {
    notify(`The turn's state was not stored: ${error.message}`, true);
  }
}

function stop() {
  if (state.controller) state.controller.abort();  // the server frees the slot on disconnect
}

async function fork() {
  const from = state.sessionId;
  try {
    const forked = await api.json("POST", `/v1/sessions/${encodeURIComponent(from)}/fork`);
    state.sessionId = forked.id;
    transcript.divider(`Forked from ${from}: this session starts from the same stored state.`);
    notify(`Forked ${from} into ${forked.id}.`);
  } catch (error) {
    notify(`Fork failed: ${error.message}`, true);
  }
  refresh();
}

async function remove() {
  const id = state.sessionId;
  try {
    await api.json("DELETE", `/v1/sessions/${encodeURIComponent(id)}`);
    startSession(`Deleted session ${id}; this is a new one.`);
  } catch (error) {
    notify(`Delete failed: ${error.message}`, true);
  }
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
$("settings-form").addEventListener("submit", (event) => event.preventDefault());
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.controller) {
    event.preventDefault();
    stop();
  }
});
ui.stop.addEventListener("click", stop);
ui.newSession.addEventListener("click", () => startSession("A new session."));
ui.fork.addEventListener("click", fork);
ui.remove.addEventListener("click", remove);
ui.model.addEventListener("change", () => startSession("A new session for this model."));
ui.apiKey.addEventListener("change", () => {
  const key = ui.apiKey.value.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  loadModels();
});

ui.apiKey.value = localStorage.getItem(KEY_STORAGE) ?? "";
startSession();
loadModels();
ui.prompt.focus();
