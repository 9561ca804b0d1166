// The server's public API as the page uses it: the API key as a Bearer token, errors in
// OpenAI's shape ({"error": {"message", "code"}}) turned into ApiError, chat streamed over SSE.
import { sseData } from "./sse.js";

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(getKey) {
    this.getKey = getKey;
  }

  headers(extra = {}) {
    const key = this.getKey();
    return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
  }

  async request(method, path, body, signal) {
    const init = { method, signal, headers: this.headers() };
    if (body !== undefined) {
      init.headers = this.headers({ "Content-Type": "application/json" });
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  async json(method, path, body) {
    return (await this.request(method, path, body)).json();
  }

  // Yields the chunks of a streamed chat completion (OpenAI's chat.completion.chunk objects).
  async *chat(body, signal) {
    const response = await this.request("POST", "/v1/chat/completions", body, signal);
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(0, chunk.error.message, chunk.error.code);
      yield chunk;
    }
  }
}

async function errorOf(response) {
  try {
    const { error } = await response.json();
    return new ApiError(response.status, error.message, error.code);
  } catch {
    return new ApiError(response.status, `${response.status} ${response.statusText}`);
  }
}
