// The conversation as shown: one list item per turn (the message, the reply, what it cost) and
// dividers for session events. Replies go through renderText, never innerHTML.
import { renderText } from "./render.js";

export class Transcript {
  constructor(list) {
    this.list = list;
  }

  clear() {
    this.list.replaceChildren();
  }

  divider(text) {
    const item = element("li", "divider", text);
    this.list.append(item);
    reveal(item);
  }

  // A new turn; returns its view, whose reply grows with show() and closes with one of
  // finish(), stopped() or failed().
  add(message, model) {
    const item = element("li", "turn");
    const user = element("div", "message user");
    user.append(element("span", "role", "You"), element("div", "text plain", message));
    const reply = element("div", "message assistant");
    reply.setAttribute("aria-busy", "true");
    const text = element("div", "text");
    const stats = element("p", "stats", "waiting for the first token…");
    reply.append(element("span", "role", model), text, stats);
    item.append(user, reply);
    this.list.append(item);
    reveal(item);
    return new TurnView(item, reply, text, stats);
  }
}

class TurnView {
  constructor(item, reply, text, stats) {
    Object.assign(this, { item, reply, text, stats });
  }

  show(text) {
    this.text.replaceChildren(renderText(text));
    reveal(this.item);
  }

  finish(result) {
    this.show(result.text);
    const fed = result.promptTokens - result.cachedTokens;
    Object.assign(this.stats.dataset, { fed, cached: result.cachedTokens,
      completion: result.completionTokens, finish: result.finishReason });
    const parts = [`${fed} tokens fed`, `${result.cachedTokens} cached`];
    if (result.ttftMs !== null) parts.push(`first token ${Math.round(result.ttftMs)} ms`);
    if (result.tokensPerSecond !== null) parts.push(`${result.tokensPerSecond.toFixed(0)} tokens/s`);
    if (result.finishReason === "length") parts.push("cut at max tokens");
    this.close(parts.join(" · "));
  }

  stopped(result) {
    this.show(result.text);
    this.item.classList.add("stopped");
    this.stats.dataset.finish = "stopped";
    this.close("stopped · not stored: the next turn continues from the state before this one");
  }

  failed(message) {
    this.item.classList.add("failed");
    this.stats.dataset.finish = "error";
    this.close(`error: ${message}`);
  }

  close(text) {
    this.stats.textContent = text;
    this.reply.removeAttribute("aria-busy");
  }
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// The newest text in sight by scrolling the transcript alone: the page (and the Stop button
// under the transcript) stays where it is however fast a reply streams.
function reveal(item) {
  const list = item.parentElement;
  if (list) list.scrollTop = list.scrollHeight;
}
