// The client against a running twopass API (TWOPASS_URL, TWOPASS_API_KEY; tests/e2e/test_js_client.py
// starts the local stack and runs this file), plus its retry rules against a scripted fetch.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";

import {
  AuthError,
  ConflictError,
  FINAL_STATES,
  INLINE_LIMIT,
  InvalidRequestError,
  NotFoundError,
  ROUTES,
  TwopassClient,
  UnavailableError,
} from "../src/index.js";

const baseUrl = process.env.TWOPASS_URL;
const apiKey = process.env.TWOPASS_API_KEY || null;
const imagePath = process.env.TWOPASS_TEST_IMAGE ?? new URL("../../../tests/data/chelsea.jpg", import.meta.url);
const catLabels = new Set(["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx", "cougar"]);
const live = { skip: baseUrl ? false : "TWOPASS_URL is not set" };
const client = () => new TwopassClient({ baseUrl, apiKey });

/** An uncompressed 24-bit BMP of `side` x `side` grey pixels: over 4 MiB without any image library. */
function bmp(side) {
  const row = Math.ceil((side * 3) / 4) * 4;
  const size = 54 + row * side;
  const bytes = new Uint8Array(size).fill(0x80);
  const view = new DataView(bytes.buffer);
  bytes.set([0x42, 0x4d]);
  view.setUint32(2, size, true);
  view.setUint32(10, 54, true);
  view.setUint32(14, 40, true);
  view.setInt32(18, side, true);
  view.setInt32(22, side, true);
  view.setUint16(26, 1, true);
  view.setUint16(28, 24, true);
  view.setUint32(30, 0, true);
  view.setUint32(34, row * side, true);
  return bytes;
}

test("every route the client calls is in the API's /openapi.json, and the job fields it types too", live, async () => {
  const schema = await (await fetch(`${baseUrl}/openapi.json`)).json();
  for (const [method, path] of ROUTES) {
    assert.ok(schema.paths[path]?.[method.toLowerCase()], `${method} ${path} is not in /openapi.json`);
  }
  const job = schema.components.schemas.JobResponse.properties;
  for (const field of ["job_id", "status", "created_at", "slow", "error", "answered_by", "agreement", "cached", "priority"]) {
    assert.ok(field in job, `JobResponse has no ${field}`);
  }
  assert.deepEqual([...job.status.enum ?? FINAL_STATES].filter((s) => FINAL_STATES.includes(s)).sort(), [...FINAL_STATES].sort());
});

test("predict answers the fast label at once; wait follows the job to the slow label", live, async () => {
  const twopass = client();
  const answer = await twopass.predict(await readFile(imagePath));
  assert.match(answer.job_id, /^[0-9a-f]{32}$/);
  assert.ok(catLabels.has(answer.fast.label), answer.fast.label);
  const seen = [];
  const done = await twopass.wait(answer.job_id, { timeoutMs: 60000, onUpdate: (job) => seen.push(job.status) });
  assert.equal(done.status, "succeeded");
  assert.ok(catLabels.has(done.slow.label), done.slow.label);
  assert.equal(seen.at(-1), "succeeded");
  const mine = await twopass.jobs({ limit: 100 });
  assert.ok(mine.jobs.some((job) => job.job_id === answer.job_id));
});

test("a Blob keeps its type; the same Idempotency-Key gives the same job", live, async () => {
  const twopass = client();
  const blob = new Blob([await readFile(imagePath)], { type: "image/jpeg" });
  const first = await twopass.predict(blob, { idempotencyKey: "js-client-idem-1" + Date.now() });
  const key = "js-client-idem-" + Date.now();
  const a = await twopass.predict(blob, { idempotencyKey: key });
  const b = await twopass.predict(blob, { idempotencyKey: key });
  assert.equal(a.job_id, b.job_id);
  assert.notEqual(first.job_id, a.job_id);
});

test("images over 4 MiB go through an upload", live, async () => {
  const big = bmp(1300);
  assert.ok(big.byteLength > INLINE_LIMIT);
  const answer = await client().predict(big);
  assert.match(answer.job_id, /^[0-9a-f]{32}$/);
  assert.equal(typeof answer.fast.label, "string");
});

test("batches: every item gets a job, and the batch can be read back", live, async () => {
  const twopass = client();
  const cat = await readFile(imagePath);
  const batch = await twopass.batch([cat, new Uint8Array([1, 2, 3]), cat]);
  assert.equal(batch.items.length, 3);
  assert.equal(batch.items[1].error, "invalid_image");
  assert.ok(batch.items[0].job_id && batch.items[2].job_id);
  const read = await twopass.getBatch(batch.batch_id);
  assert.equal(read.total, 3);
});

test("cancel and retry: a cancelled job goes back to the queue; a finished one is a ConflictError", live, async () => {
  const twopass = client();
  const answer = await twopass.predict(await readFile(imagePath));
  let cancelled = null;
  try {
    cancelled = await twopass.cancel(answer.job_id);
  } catch (error) {
    assert.ok(error instanceof ConflictError && error.code === "job_final", String(error));
  }
  if (cancelled) {
    assert.equal(cancelled.status, "cancelled");
    const again = await twopass.retry(answer.job_id);
    assert.equal(again.status, "queued");
  }
  await twopass.wait(answer.job_id, { timeoutMs: 60000 });
  await assert.rejects(twopass.cancel(answer.job_id), (error) => error instanceof ConflictError && error.status === 409);
});

test("errors are typed: 404 unknown job, 400 not an image, 403 wrong key", live, async () => {
  const twopass = client();
  await assert.rejects(twopass.job("0".repeat(32)), (error) => error instanceof NotFoundError && error.status === 404);
  await assert.rejects(twopass.predict(new Uint8Array([0xff, 0xd8, 0xff, 0, 1, 2])), (error) => {
    return error instanceof InvalidRequestError && error.status === 400 && error.code === "invalid_image";
  });
  if (apiKey) {
    const stranger = new TwopassClient({ baseUrl, apiKey: "not-a-key" });
    await assert.rejects(stranger.jobs(), (error) => error instanceof AuthError && error.status === 403);
  }
});

// ---------------------------------------------------------------- retries, against a scripted fetch

function scripted(...answers) {
  const calls = [];
  const fetchImpl = async (url, init) => {
    calls.push({ url, init, at: performance.now() });
    const next = answers.shift();
    if (next instanceof Error) throw next;
    return new Response(JSON.stringify(next.body ?? {}), { status: next.status, headers: next.headers ?? {} });
  };
  return { calls, fetchImpl };
}

test("429 and 503 are retried after their Retry-After, then the answer is returned", async () => {
  const { calls, fetchImpl } = scripted(
    { status: 503, body: { error: "dependency_unavailable", detail: "x" }, headers: { "Retry-After": "0.3" } },
    { status: 429, body: { error: "overloaded", detail: "y" }, headers: { "Retry-After": "0.2" } },
    { status: 200, body: { job_id: "a".repeat(32), status: "queued" } },
  );
  const twopass = new TwopassClient({ baseUrl: "http://example.invalid", fetch: fetchImpl });
  const job = await twopass.job("a".repeat(32));
  assert.equal(job.status, "queued");
  assert.equal(calls.length, 3);
  assert.ok(calls[1].at - calls[0].at >= 290, `waited ${calls[1].at - calls[0].at} ms, not Retry-After's 300`);
  assert.ok(calls[2].at - calls[1].at >= 190);
});

test("when retries run out the error says when to come back", async () => {
  const busy = { status: 429, body: { error: "overloaded", detail: "backlog" }, headers: { "Retry-After": "0" } };
  const { calls, fetchImpl } = scripted(busy, busy, busy);
  const twopass = new TwopassClient({ baseUrl: "http://example.invalid", fetch: fetchImpl, retries: 2 });
  await assert.rejects(twopass.jobs(), (error) => error instanceof UnavailableError && error.code === "overloaded" && error.retryAfter === 0);
  assert.equal(calls.length, 3);
});

test("a POST is retried after a network failure only with an Idempotency-Key; auth headers are sent", async () => {
  const { calls, fetchImpl } = scripted(new TypeError("connection reset"), { status: 200, body: { job_id: null, status: "shed" } });
  const twopass = new TwopassClient({ baseUrl: "http://example.invalid/", apiKey: "k", token: async () => "tok", fetch: fetchImpl });
  await twopass.predict(new Uint8Array([0xff, 0xd8, 0xff, 0xe0]));
  assert.equal(calls.length, 2);
  const headers = calls[1].init.headers;
  assert.equal(headers["x-api-key"], "k");
  assert.equal(headers.Authorization, "Bearer tok");
  assert.equal(headers["Content-Type"], "image/jpeg");
  assert.equal(headers["Idempotency-Key"], calls[0].init.headers["Idempotency-Key"]);
  assert.equal(calls[0].url, "http://example.invalid/predict");

  const once = scripted(new TypeError("connection reset"));
  const plain = new TwopassClient({ baseUrl: "http://example.invalid", fetch: once.fetchImpl });
  await assert.rejects(plain.request("POST", "/batches", { json: { items: [] } }), (error) => error.code === "network_error");
  assert.equal(once.calls.length, 1);
});
