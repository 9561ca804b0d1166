// One chat turn over the stream: the reply as it grows, then what the turn cost. Time to first
// token is measured here, in the browser (so it includes the network); tokens/s is the decode
// rate after the first token.

export async function streamTurn(api, body, signal, onText) {
  const start = performance.now();
  let text = "", first = null, lastAt = null, usage = null, finishReason = null, stopped = false;
  try {
    for await (const chunk of api.chat(body, signal)) {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices[0];
      if (!choice) continue;
      if (choice.finish_reason) finishReason = choice.finish_reason;
      if (choice.delta.content) {
        lastAt = performance.now();
        first ??= lastAt;
        text += choice.delta.content;
        onText(text);
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") throw error;
    stopped = true;
  }
  const completion = usage ? usage.completion_tokens : null;
  return {
    text,
    stopped,
    finishReason,
    promptTokens: usage ? usage.prompt_tokens : null,
    cachedTokens: usage ? (usage.prompt_tokens_details?.cached_tokens ?? 0) : null,
    completionTokens: completion,
    ttftMs: first === null ? null : first - start,
    tokensPerSecond: completion > 1 && lastAt > first
      ? (completion - 1) / ((lastAt - first) / 1000) : null,
  };
}
