// The memory chart: bytes against conversation length in tokens. The stored state is measured
// after each turn (GET /v1/sessions/{id}) and stays one size; the KV cache a transformer of the
// same size would hold is computed from the model card's bytes per token and grows with length.
const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 320, HEIGHT = 200;
const LEFT = 56, RIGHT = 12, TOP = 12, BOTTOM = 30;

export function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${units[unit]}`;
}

// 1, 2 or 5 times a power of ten, at least `value`
function niceCeil(value) {
  const power = 10 ** Math.floor(Math.log10(Math.max(value, 1)));
  return [1, 2, 5, 10].map((m) => m * power).find((v) => v >= value);
}

// points: [{tokens, bytes}] one per stored turn; stateBytes and kvPerToken from the model card
export function drawChart(svg, points, stateBytes, kvPerToken) {
  svg.replaceChildren();
  const last = points.at(-1);
  const bytes = last ? last.bytes : stateBytes;
  if (!bytes || !kvPerToken) return;
  // wide enough to show where the two lines cross, and the conversation so far
  const crossover = bytes / kvPerToken;
  const maxTokens = niceCeil(Math.max(2 * crossover, (last ? last.tokens : 0) * 1.1, 10));
  const maxBytes = Math.max(bytes, kvPerToken * maxTokens) * 1.05;
  const x = (tokens) => LEFT + (tokens / maxTokens) * (WIDTH - LEFT - RIGHT);
  const y = (b) => HEIGHT - BOTTOM - (b / maxBytes) * (HEIGHT - TOP - BOTTOM);

  add(svg, "line", { class: "axis", x1: LEFT, y1: y(0), x2: WIDTH - RIGHT, y2: y(0) });
  add(svg, "line", { class: "axis", x1: LEFT, y1: y(0), x2: LEFT, y2: TOP });
  for (const t of [0, maxTokens / 2, maxTokens]) {
    add(svg, "text", { class: "tick", x: x(t), y: HEIGHT - BOTTOM + 13, "text-anchor": "middle" },
      String(t));
  }
  add(svg, "text", { class: "tick", x: WIDTH - RIGHT, y: HEIGHT - 3, "text-anchor": "end" },
    "tokens in the conversation");
  for (const b of [bytes, kvPerToken * maxTokens]) {
    add(svg, "text", { class: "tick", x: LEFT - 4, y: y(b) + 4, "text-anchor": "end" },
      formatBytes(b));
  }

  add(svg, "line", { class: "kv", x1: x(0), y1: y(0), x2: x(maxTokens), y2: y(kvPerToken * maxTokens) },
    null, `KV cache (computed): ${formatBytes(kvPerToken)} per token`);
  add(svg, "line", { class: "state", x1: x(0), y1: y(bytes), x2: x(maxTokens), y2: y(bytes) },
    null, `retention state: ${formatBytes(bytes)} whatever the length`);
  if (last) {
    add(svg, "line", { class: "now", x1: x(last.tokens), y1: y(0), x2: x(last.tokens), y2: TOP });
  }
  points.forEach((p, i) => {
    add(svg, "circle", { class: "point", cx: x(p.tokens), cy: y(p.bytes), r: 3.5 }, null,
      `after turn ${i + 1}: ${p.tokens} tokens, ${formatBytes(p.bytes)} stored`);
  });
}

function add(svg, tag, attributes, text = null, title = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  if (title !== null) {
    const tip = document.createElementNS(SVG, "title");
    tip.textContent = title;
    node.append(tip);
  }
  svg.append(node);
  return node;
}
