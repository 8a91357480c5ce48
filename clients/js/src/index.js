// twopass JavaScript client: browsers, React Native and Node 18+ (anything with fetch). No dependencies.
// Types: index.d.ts beside this file. The demo page at /demo serves this same file.

/** The routes this client calls, by method; the tests check each one against /openapi.json. */
export const ROUTES = Object.freeze([
  ["POST", "/predict"],
  ["POST", "/uploads"],
  ["GET", "/job/{job_id}"],
  ["DELETE", "/job/{job_id}"],
  ["POST", "/job/{job_id}/retry"],
  ["GET", "/jobs"],
  ["POST", "/batches"],
  ["GET", "/batches/{batch_id}"],
]);

/** Job states after which nothing changes. */
export const FINAL_STATES = Object.freeze(["succeeded", "failed", "cancelled", "expired"]);
/** Largest image sent in the request itself; larger ones go through POST /uploads (a presigned PUT). */
export const INLINE_LIMIT = 4 * 1024 * 1024;
/** The longest ?wait= the API takes, in seconds. */
const MAX_WAIT_SECONDS = 20;

/** Any error answer of the API: `status`, the API's `code` and `detail`, `retryAfter` in seconds when given. */
export class TwopassError extends Error {
  constructor(status, code, detail, retryAfter = null) {
    super(`${status} ${code}: ${detail}`);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}
/** 401 (missing, expired or invalid user token) and 403 (missing or invalid API key). */
export class AuthError extends TwopassError {}
/** 404: no such job or batch, or it is another caller's. */
export class NotFoundError extends TwopassError {}
/** 409 and 410: the job's state does not allow it (already final, not retryable, image gone). */
export class ConflictError extends TwopassError {}
/** 400, 413, 415, 422: the request was wrong; retrying it as is will not help. */
export class InvalidRequestError extends TwopassError {}
/** 429 and 503: the service is busy or a dependency is down; `retryAfter` says when to try again. */
export class UnavailableError extends TwopassError {}
/** No answer at all: the network failed or the request timed out. */
export class NetworkError extends TwopassError {
  constructor(detail, cause) {
    super(0, "network_error", detail);
    this.cause = cause;
  }
}

const CLASSES = { 401: AuthError, 403: AuthError, 404: NotFoundError, 409: ConflictError, 410: ConflictError, 429: UnavailableError, 503: UnavailableError };

function errorFor(status, body, retryAfter) {
  const Class = CLASSES[status] ?? (status >= 500 ? UnavailableError : InvalidRequestError);
  return new Class(status, body?.error ?? `http_${status}`, body?.detail ?? "", retryAfter);
}

function retryAfterSeconds(response) {
  const value = response.headers.get("retry-after");
  if (value === null) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}

const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(timer), reject(signal.reason)), { once: true });
  });

const MAGIC = [
  [[0xff, 0xd8, 0xff], "image/jpeg"],
  [[0x89, 0x50, 0x4e, 0x47], "image/png"],
  [[0x47, 0x49, 0x46, 0x38], "image/gif"],
  [[0x42, 0x4d], "image/bmp"],
  [[0x49, 0x49, 0x2a, 0x00], "image/tiff"],
  [[0x4d, 0x4d, 0x00, 0x2a], "image/tiff"],
];

/** The image as bytes and a media type: a File or Blob keeps its type; bytes are recognised by their first bytes. */
async function asImage(image) {
  let bytes;
  let type = "";
  if (typeof Blob !== "undefined" && image instanceof Blob) {
    bytes = new Uint8Array(await image.arrayBuffer());
    type = image.type;
  } else if (image instanceof ArrayBuffer) {
    bytes = new Uint8Array(image);
  } else if (ArrayBuffer.isView(image)) {
    bytes = new Uint8Array(image.buffer, image.byteOffset, image.byteLength);
  } else {
    throw new TypeError("image must be a File, Blob, ArrayBuffer or Uint8Array");
  }
  if (!type.startsWith("image/")) {
    const webp = bytes.length > 12 && String.fromCharCode(...bytes.subarray(8, 12)) === "WEBP";
    type = webp ? "image/webp" : MAGIC.find(([sig]) => sig.every((b, i) => bytes[i] === b))?.[1] ?? "application/octet-stream";
  }
  return { bytes, type };
}

function newIdempotencyKey() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return `${Date.now().toString(16)}-${Math.random().toString(16).slice(2)}-${Math.random().toString(16).slice(2)}`;
}

function query(params) {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return entries.length ? `?${new URLSearchParams(entries.map(([k, v]) => [k, String(v)]))}` : "";
}

/**
 * A client of one twopass API.
 *
 * Auth: `apiKey` (sent as x-api-key) and/or `token`, the signed-in user's JWT (a string, or a function
 * returning one, called before each request so a refreshed token is used).
 */
export class TwopassClient {
  constructor({ baseUrl, apiKey = null, token = null, retries = 3, timeoutMs = 30000, maxRetryDelayMs = 20000, fetch: fetchImpl } = {}) {
    if (!baseUrl) throw new TypeError("baseUrl is required, e.g. https://abc.execute-api.eu-west-1.amazonaws.com/prod");
    this.baseUrl = String(baseUrl).replace(/\/+$/, "");
    this.apiKey = apiKey;
    this.token = token;
    this.retries = retries;
    this.timeoutMs = timeoutMs;
    this.maxRetryDelayMs = maxRetryDelayMs;
    this._fetch = fetchImpl ?? globalThis.fetch.bind(globalThis);
  }

  /**
   * Classify an image with the fast model at once; the slow model's job follows (see `wait`).
   * Images over 4 MiB go through an upload. Retries are safe: each call has an Idempotency-Key.
   */
  async predict(image, options = {}) {
    const { bytes, type } = await asImage(image);
    const { idempotencyKey = newIdempotencyKey(), callbackUrl, deadlineSeconds, priority, onOverload, slow, signal } = options;
    const headers = { "Idempotency-Key": idempotencyKey };
    if (bytes.byteLength > INLINE_LIMIT) {
      const uploadId = await this.upload(bytes, type, { signal });
      const body = { upload_id: uploadId, callback_url: callbackUrl, deadline_seconds: deadlineSeconds, priority, on_overload: onOverload, slow };
      return this.request("POST", "/predict", { json: dropEmpty(body), headers, signal });
    }
    const params = query({ callback_url: callbackUrl, deadline_seconds: deadlineSeconds, priority, on_overload: onOverload, slow });
    return this.request("POST", `/predict${params}`, { body: bytes, contentType: type, headers, signal });
  }

  /** PUT an image through a presigned upload URL; returns the upload id for `predict` or `batch`. */
  async upload(image, contentType = null, { signal } = {}) {
    const { bytes, type } = await asImage(image);
    const slot = await this.request("POST", "/uploads", {
      json: { content_type: contentType ?? type, content_length: bytes.byteLength },
      signal,
    });
    const put = await this._fetch(slot.url, { method: slot.method ?? "PUT", headers: slot.headers ?? {}, body: bytes, signal });
    if (!put.ok) throw new TwopassError(put.status, "upload_failed", `the upload PUT answered ${put.status}`);
    return slot.upload_id;
  }

  /** The job's current body; `wait` (0-20 s) holds the answer until the job is final or the time runs out. */
  job(jobId, { wait, signal } = {}) {
    return this.request("GET", `/job/${encodeURIComponent(jobId)}${query({ wait })}`, { signal });
  }

  /** The job once final (succeeded, failed, cancelled, expired), by waiting reads; throws after `timeoutMs`. */
  async wait(jobId, { timeoutMs = 120000, onUpdate, signal } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = (deadline - Date.now()) / 1000;
      const body = await this.job(jobId, { wait: Math.max(0, Math.min(MAX_WAIT_SECONDS, Math.floor(left))), signal });
      onUpdate?.(body);
      if (FINAL_STATES.includes(body.status)) return body;
      if (Date.now() >= deadline) throw new TwopassError(0, "wait_timeout", `job ${jobId} is still ${body.status}`);
    }
  }

  /** Cancel a queued or running job; 409 (ConflictError) when it had already ended. */
  cancel(jobId, { signal } = {}) {
    return this.request("DELETE", `/job/${encodeURIComponent(jobId)}`, { signal });
  }

  /** Put a failed, expired or cancelled job back in the queue under the same id. */
  retry(jobId, { signal } = {}) {
    return this.request("POST", `/job/${encodeURIComponent(jobId)}/retry`, { signal });
  }

  /** One page of the caller's own jobs, newest first: `{jobs, next_cursor}`. */
  jobs({ status, limit, cursor, signal } = {}) {
    return this.request("GET", `/jobs${query({ status, limit, cursor })}`, { signal });
  }

  /** Up to 100 images in one call; each item is a job or an item error, never failing the others. */
  async batch(images, { signal } = {}) {
    const items = [];
    for (const image of images) {
      const { bytes, type } = await asImage(image);
      items.push(bytes.byteLength > INLINE_LIMIT ? { upload_id: await this.upload(bytes, type, { signal }) } : { image_data: toBase64(bytes) });
    }
    return this.request("POST", "/batches", { json: { items }, signal });
  }

  /** A batch's progress and every item. */
  getBatch(batchId, { signal } = {}) {
    return this.request("GET", `/batches/${encodeURIComponent(batchId)}`, { signal });
  }

  /** One API call with auth, a timeout, and retries of 429/503 (and 409 with Retry-After) and network failures, honouring Retry-After. */
  async request(method, path, { json, body, contentType, headers = {}, signal } = {}) {
    const all = { ...headers };
    if (this.apiKey) all["x-api-key"] = this.apiKey;
    const token = typeof this.token === "function" ? await this.token() : this.token;
    if (token) all.Authorization = `Bearer ${token}`;
    if (json !== undefined) {
      body = JSON.stringify(json);
      all["Content-Type"] = "application/json";
    } else if (body !== undefined) {
      all["Content-Type"] = contentType ?? "application/octet-stream";
    }
    // POSTs without an Idempotency-Key could run twice if an answer is lost: only their 429/503 are retried.
    const replayable = method !== "POST" || "Idempotency-Key" in all;
    for (let attempt = 0; ; attempt++) {
      let response;
      const timeout = AbortSignal.timeout(this.timeoutMs);
      try {
        response = await this._fetch(this.baseUrl + path, {
          method,
          headers: all,
          body,
          signal: signal ? AbortSignal.any?.([signal, timeout]) ?? signal : timeout,
        });
      } catch (cause) {
        if (signal?.aborted) throw cause;
        if (!replayable || attempt >= this.retries) throw new NetworkError(`${method} ${path}: ${cause?.message ?? cause}`, cause);
        await sleep(this._backoff(attempt, null), signal);
        continue;
      }
      const retryAfter = retryAfterSeconds(response);
      const text = await response.text();
      let parsed = null;
      try {
        parsed = text ? JSON.parse(text) : null;
      } catch {
        parsed = { error: `http_${response.status}`, detail: text.slice(0, 200) };
      }
      if (response.ok) return parsed;
      // 429 and 503, and a 409 that says when to come back (a request or an image still in progress).
      const transient = response.status === 429 || response.status === 503 || (response.status === 409 && retryAfter !== null);
      if (transient && attempt < this.retries) {
        await sleep(this._backoff(attempt, retryAfter), signal);
        continue;
      }
      throw errorFor(response.status, parsed, retryAfter);
    }
  }

  _backoff(attempt, retryAfter) {
    const ms = retryAfter !== null ? retryAfter * 1000 : 250 * 2 ** attempt * (0.5 + Math.random());
    return Math.min(ms, this.maxRetryDelayMs);
  }
}

function dropEmpty(object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined && v !== null));
}

function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}
