// Types of the twopass JavaScript client. The response shapes follow the API's /openapi.json
// (PredictResponse, JobResponse, JobListResponse, BatchResponse, UploadResponse); the client's
// tests check the routes and the fields named here against the running API's schema.

export type JobStatus = "queued" | "running" | "succeeded" | "failed" | "cancelled" | "expired";
export type Image = Blob | ArrayBuffer | ArrayBufferView;

export interface Label {
  label: string;
  probability: number;
  class_id: number;
}

export interface FastResult {
  model: string;
  label: string;
  top_k: Label[];
  inference_ms: number;
}

export interface SlowResult {
  model: string;
  label: string;
  top_k: Label[];
  batch_size?: number;
  inference_ms?: number;
  queue_wait_ms?: number;
}

export interface PredictResponse {
  job_id: string | null;
  status: JobStatus | "shed";
  fast: FastResult;
  status_url?: string | null;
  answered_by?: "fast" | "slow" | null;
  [field: string]: unknown;
}

export interface Job {
  job_id: string;
  status: JobStatus;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  finished_at: string | null;
  attempts: number;
  slow: SlowResult | null;
  error: string | null;
  answered_by: "fast" | "slow" | null;
  model_version: string | null;
  agreement: boolean | null;
  cached: boolean;
  priority: "high" | "normal";
  deadline_at: string | null;
  [field: string]: unknown;
}

export interface JobList {
  jobs: Job[];
  next_cursor: string | null;
}

export interface BatchItemError {
  index: number;
  error: string;
  detail: string;
}

export interface BatchResponse {
  batch_id: string;
  items: Array<(PredictResponse & { index: number }) | BatchItemError>;
}

export interface BatchStatus {
  batch_id: string;
  created_at: string;
  total: number;
  done: number;
  counts: Record<string, number>;
  items: Array<(Job & { index: number }) | BatchItemError>;
}

export interface PredictOptions {
  idempotencyKey?: string;
  callbackUrl?: string;
  deadlineSeconds?: number;
  priority?: "high" | "normal";
  onOverload?: "shed" | "reject";
  slow?: "auto" | "always" | "never";
  signal?: AbortSignal;
}

export interface ClientOptions {
  /** The API's base URL, stage included (https://…/prod); http://127.0.0.1:3000 locally. */
  baseUrl: string;
  /** Sent as x-api-key. */
  apiKey?: string | null;
  /** The signed-in user's JWT, or a function giving the current one (AuthMode cognito|jwt). */
  token?: string | null | (() => string | null | Promise<string | null>);
  /** Retries of 429, 503, a 409 with Retry-After, and network failures (default 3), honouring Retry-After. */
  retries?: number;
  /** Per-request timeout in ms (default 30000). */
  timeoutMs?: number;
  /** Longest wait between two tries in ms (default 20000). */
  maxRetryDelayMs?: number;
  fetch?: typeof fetch;
}

export declare const ROUTES: ReadonlyArray<readonly ["GET" | "POST" | "PUT" | "DELETE", string]>;
export declare const FINAL_STATES: readonly JobStatus[];
export declare const INLINE_LIMIT: number;

export declare class TwopassError extends Error {
  /** HTTP status; 0 when no answer came. */
  readonly status: number;
  /** The API's error code, e.g. "invalid_image", "token_expired", "overloaded". */
  readonly code: string;
  readonly detail: string;
  /** Seconds the API asked to wait (Retry-After), or null. */
  readonly retryAfter: number | null;
  constructor(status: number, code: string, detail: string, retryAfter?: number | null);
}
export declare class AuthError extends TwopassError {}
export declare class NotFoundError extends TwopassError {}
export declare class ConflictError extends TwopassError {}
export declare class InvalidRequestError extends TwopassError {}
export declare class UnavailableError extends TwopassError {}
export declare class NetworkError extends TwopassError {
  readonly cause: unknown;
  constructor(detail: string, cause?: unknown);
}

export declare class TwopassClient {
  readonly baseUrl: string;
  apiKey: string | null;
  token: ClientOptions["token"];
  constructor(options: ClientOptions);
  predict(image: Image, options?: PredictOptions): Promise<PredictResponse>;
  upload(image: Image, contentType?: string | null, options?: { signal?: AbortSignal }): Promise<string>;
  job(jobId: string, options?: { wait?: number; signal?: AbortSignal }): Promise<Job>;
  wait(jobId: string, options?: { timeoutMs?: number; onUpdate?: (job: Job) => void; signal?: AbortSignal }): Promise<Job>;
  cancel(jobId: string, options?: { signal?: AbortSignal }): Promise<Job>;
  retry(jobId: string, options?: { signal?: AbortSignal }): Promise<Job>;
  jobs(options?: { status?: JobStatus; limit?: number; cursor?: string; signal?: AbortSignal }): Promise<JobList>;
  batch(images: Iterable<Image>, options?: { signal?: AbortSignal }): Promise<BatchResponse>;
  getBatch(batchId: string, options?: { signal?: AbortSignal }): Promise<BatchStatus>;
  request<T = unknown>(
    method: string,
    path: string,
    options?: { json?: unknown; body?: BodyInit; contentType?: string; headers?: Record<string, string>; signal?: AbortSignal },
  ): Promise<T>;
}
