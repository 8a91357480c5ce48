"""Every setting twopass reads, from one place: the process environment.

Names are the ones ``template.yaml`` sets on the Lambda function and the ECS task, so the local
stack, tests and production read the same variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from twopass.exceptions import ConfigError

#: Repository checkout that holds this package (``layers/twopass/twopass`` → repo root), if any.
_PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = _PACKAGE_DIR.parents[2]
DATA_DIR = _PACKAGE_DIR / "data"


def _default_model(role: str, stem: str) -> str:
    # In Lambda the fast-model layer unpacks into /opt; in the worker image it is copied to
    # /opt/models; in a checkout it sits under layers/models. The env var always wins.
    for candidate in (Path("/opt/models") / f"{stem}.onnx", Path("/opt") / f"{stem}.onnx"):
        if candidate.exists():
            return str(candidate)
    return str(REPO_ROOT / "layers" / "models" / role / f"{stem}.onnx")


@dataclass(frozen=True)
class Settings:
    """Runtime settings; build with :meth:`from_env`, override in tests with :meth:`replace`."""

    #: DynamoDB table of job records (``JobsTable`` in the template).
    table_name: str = field(default="", metadata={"env": "TWOPASS_TABLE_NAME"})
    #: SQS queue URL the API publishes to and the worker consumes (``JobsQueue``).
    queue_url: str = field(default="", metadata={"env": "TWOPASS_QUEUE_URL"})
    #: SQS queue of high-priority jobs (``HighPriorityJobsQueue``); the worker reads it first. Empty: one
    #: queue for every job.
    high_priority_queue_url: str = field(default="", metadata={"env": "TWOPASS_HIGH_PRIORITY_QUEUE_URL"})
    #: Path (or ``s3://`` URI) of the fast model's ``.onnx``; its card sits beside it.
    fast_model: str = field(
        default_factory=lambda: _default_model("fast", "efficientnet-lite0-int8"),
        metadata={"env": "TWOPASS_FAST_MODEL"},
    )
    #: Path (or ``s3://`` URI) of the slow model's ``.onnx``.
    slow_model: str = field(
        default_factory=lambda: _default_model("slow", "efficientnet-lite2-fp32"),
        metadata={"env": "TWOPASS_SLOW_MODEL"},
    )
    #: onnxruntime execution providers in order of preference (``cuda``, ``cpu``, ``tensorrt`` or full names).
    #: Each one named is required: a model that would run without it does not load, and the worker exits. A
    #: trailing ``?`` makes it optional (``cuda?,cpu``: CUDA when it works, else the CPU).
    providers: tuple[str, ...] = field(
        default=("CUDAExecutionProvider?", "CPUExecutionProvider"), metadata={"env": "TWOPASS_PROVIDERS"}
    )
    #: Let a model serve on the next provider when a required one (CUDA) does not load, as if every
    #: provider were named with ``?``; ``/health/all`` still says ``degraded`` while it does.
    allow_cpu_fallback: bool = field(default=False, metadata={"env": "TWOPASS_ALLOW_CPU_FALLBACK"})
    #: Threads one onnxruntime session may use inside an operator (0 = onnxruntime decides).
    intra_op_threads: int = field(default=0, metadata={"env": "TWOPASS_INTRA_OP_THREADS"})
    #: How many predictions the API runs at once (its bounded inference pool). 0: the cores plus one (3 on
    #: 2 cores), the extra request decoding and crossing threads while the others run the model; with
    #: ``TWOPASS_INTRA_OP_THREADS`` above 1, cores ÷ those threads, plus one. Measured on 2 cores with 0 and
    #: 1 intra-op threads (docs/performance.md).
    inference_concurrency: int = field(default=0, metadata={"env": "TWOPASS_INFERENCE_CONCURRENCY"})
    #: API: threads that wait on the job table, queue and bucket; 0: twice the inference concurrency, at
    #: least 4 (a request holds one at a time, and requests past the inference pool wait on the model).
    io_threads: int = field(default=0, metadata={"env": "TWOPASS_IO_THREADS"})
    #: Labels returned with probabilities in each response.
    top_k: int = field(default=5, metadata={"env": "TWOPASS_TOP_K"})
    #: Largest accepted image, in bytes of the encoded file. 4 MiB: API Gateway hands a binary body
    #: to Lambda base64-encoded, and Lambda's 6 MB request limit applies to that (4 MiB × 4/3 fits).
    max_image_bytes: int = field(default=4 * 1024 * 1024, metadata={"env": "TWOPASS_MAX_IMAGE_BYTES"})
    #: Images up to this size travel inside the queue message; larger ones through the payload bucket.
    inline_image_bytes: int = field(default=256 * 1024, metadata={"env": "TWOPASS_INLINE_IMAGE_BYTES"})
    #: S3 bucket for claim-checked images (``PayloadBucket``); without it big images are refused.
    payload_bucket: str = field(default="", metadata={"env": "TWOPASS_PAYLOAD_BUCKET"})
    #: API: largest image accepted through ``POST /uploads`` (a presigned PUT into the payload bucket), in bytes.
    #: A presigned PUT cannot cap the size S3 takes, so the API checks the object's size before reading it.
    upload_max_bytes: int = field(default=50 * 1024 * 1024, metadata={"env": "TWOPASS_UPLOAD_MAX_BYTES"})
    #: API: minutes an upload's presigned URL stays valid; an upload not PUT by then is unknown (404).
    upload_expiry_minutes: float = field(default=15.0, metadata={"env": "TWOPASS_UPLOAD_EXPIRY_MINUTES"})
    #: Comma-separated API keys the app itself checks in ``x-api-key`` (the local stack sets it;
    #: on AWS, API Gateway's usage plan checks keys before the function runs, so it stays empty).
    api_keys: str = field(default="", metadata={"env": "TWOPASS_API_KEYS"})
    #: API: secret that keys the HMAC of ``GET /jobs`` page cursors, so an altered cursor, or another
    #: caller's, is a 400 ``invalid_cursor``. The template generates one per stack; empty: a fixed key
    #: (cursors are still bound to their caller).
    cursor_secret: str = field(default="", metadata={"env": "TWOPASS_CURSOR_SECRET"})
    #: API: who owns a request: ``apikey`` (the API key), ``cognito`` or ``jwt`` (the subject of the user's
    #: token in ``Authorization: Bearer <JWT>``, checked against the issuer's keys unless API Gateway did).
    auth_mode: str = field(default="apikey", metadata={"env": "TWOPASS_AUTH_MODE"})
    #: API (cognito|jwt): the tokens' issuer (``iss``), e.g. ``https://cognito-idp.<region>.amazonaws.com/<pool id>``.
    jwt_issuer: str = field(default="", metadata={"env": "TWOPASS_JWT_ISSUER"})
    #: API (cognito|jwt): comma-separated audiences accepted (``aud``, or a Cognito access token's ``client_id``).
    jwt_audience: str = field(default="", metadata={"env": "TWOPASS_JWT_AUDIENCE"})
    #: API (cognito|jwt): where the issuer's signing keys are; empty: ``<issuer>/.well-known/jwks.json``.
    jwks_url: str = field(default="", metadata={"env": "TWOPASS_JWKS_URL"})
    #: API: comma-separated origins a browser page may call from (CORS); ``*`` for any, ``:*`` for any port
    #: (``http://localhost:*``); empty: none. The local stack allows localhost and 127.0.0.1 on any port.
    cors_allow_origins: str = field(default="", metadata={"env": "TWOPASS_CORS_ALLOW_ORIGINS"})
    #: API: serve the demo page at ``/demo`` (on in the local stack).
    demo: bool = field(default=False, metadata={"env": "TWOPASS_DEMO"})
    #: How long an ``Idempotency-Key`` maps to its job (at most the job's own TTL).
    idempotency_ttl_hours: float = field(default=24.0, metadata={"env": "TWOPASS_IDEMPOTENCY_TTL_HOURS"})
    #: Largest accepted image, in decoded pixels (width × height): stops decompression bombs.
    max_image_pixels: int = field(default=40_000_000, metadata={"env": "TWOPASS_MAX_IMAGE_PIXELS"})
    #: Days a job record lives before DynamoDB's TTL removes it (reads treat it as gone after).
    job_ttl_days: float = field(default=7.0, metadata={"env": "TWOPASS_JOB_TTL_DAYS"})
    #: API: the most one request may spend waiting on the job table and the queue before it answers
    #: 503 with Retry-After (well inside API Gateway's 29 s integration timeout).
    api_deadline_seconds: float = field(default=6.0, metadata={"env": "TWOPASS_API_DEADLINE_SECONDS"})
    #: API: read timeout of one AWS call on the request path (each call is tried at most twice).
    api_call_timeout_seconds: float = field(default=2.0, metadata={"env": "TWOPASS_API_CALL_TIMEOUT_SECONDS"})
    #: API: the deadline a job gets when ``POST /predict`` names none (seconds; 0 = no deadline). A job
    #: not started by its deadline is never run: it ends ``expired``.
    default_deadline_seconds: float = field(default=0.0, metadata={"env": "TWOPASS_DEFAULT_DEADLINE_SECONDS"})
    #: API: the job queue's message retention (``QueueRetentionSeconds``), the longest deadline a job
    #: may ask for: a message is gone after it anyway.
    queue_retention_seconds: int = field(default=345600, metadata={"env": "TWOPASS_QUEUE_RETENTION_SECONDS"})
    #: API: the most queued jobs (both queues, approximate) the service takes; above it ``POST /predict``
    #: still answers with the fast model but queues no slow job (``"status": "shed"``), or answers 429
    #: when the request says ``on_overload: reject``. 0 = no limit.
    max_backlog: int = field(default=0, metadata={"env": "TWOPASS_MAX_BACKLOG"})
    #: API: how long the queue depth read for ``max_backlog`` is reused before it is read again.
    backlog_cache_seconds: float = field(default=5.0, metadata={"env": "TWOPASS_BACKLOG_CACHE_SECONDS"})
    #: API under Lambda: the most concurrent executions ``GET /job/{id}?wait=`` may hold at ``api_rate_limit``:
    #: the longest wait becomes this / the rate (at most 20 s). 0 = no cap (waits up to 20 s).
    wait_concurrency: int = field(default=0, metadata={"env": "TWOPASS_WAIT_CONCURRENCY"})
    #: API: the stage's steady request rate (requests/s, ``ApiThrottleRateLimit``), for ``wait_concurrency``.
    api_rate_limit: float = field(default=0.0, metadata={"env": "TWOPASS_API_RATE_LIMIT"})
    #: Worker: a job still ``queued`` and never started this long after it was created is checked for a
    #: lost queue message (an outage between the record write and the publish) and republished or failed.
    reconcile_after_seconds: float = field(default=900.0, metadata={"env": "TWOPASS_RECONCILE_AFTER_SECONDS"})
    #: Worker: how often it looks for such jobs (0 = never).
    reconcile_seconds: float = field(default=60.0, metadata={"env": "TWOPASS_RECONCILE_SECONDS"})
    #: Worker: largest batch given to one ``session.run``.
    max_batch_size: int = field(default=16, metadata={"env": "TWOPASS_MAX_BATCH_SIZE"})
    #: Worker: longest a partial batch waits for more work after its first job arrived.
    max_wait_ms: int = field(default=10, metadata={"env": "TWOPASS_MAX_WAIT_MS"})
    #: Worker: concurrent long-polling receivers (per queue, with a high-priority queue).
    receivers: int = field(default=2, metadata={"env": "TWOPASS_RECEIVERS"})
    #: Worker: while both queues have work, the share of jobs it takes from the normal queue (above 0,
    #: below 1): high-priority jobs go first, normal ones never starve.
    normal_share: float = field(default=0.25, metadata={"env": "TWOPASS_NORMAL_SHARE"})
    #: Worker: threads decoding and preprocessing images ahead of inference.
    decode_threads: int = field(default=2, metadata={"env": "TWOPASS_DECODE_THREADS"})
    #: Worker: processes per container (one model session each), like a pool of workers.
    worker_processes: int = field(default=1, metadata={"env": "TWOPASS_WORKER_PROCESSES"})
    #: Worker: SQS long-poll wait per receive call.
    poll_wait_seconds: int = field(default=20, metadata={"env": "TWOPASS_POLL_WAIT_SECONDS"})
    #: Worker: visibility granted to a message while its batch runs (renewed while it runs).
    visibility_timeout_seconds: int = field(default=60, metadata={"env": "TWOPASS_VISIBILITY_TIMEOUT_SECONDS"})
    #: Worker: how often it records that it is alive.
    heartbeat_seconds: float = field(default=10.0, metadata={"env": "TWOPASS_HEARTBEAT_SECONDS"})
    #: Worker: how often it marks jobs found in the dead-letter queue as failed (0 = never).
    dlq_sweep_seconds: float = field(default=60.0, metadata={"env": "TWOPASS_DLQ_SWEEP_SECONDS"})
    #: API: a worker whose last heartbeat is older than this is reported as not alive.
    worker_stale_seconds: float = field(default=60.0, metadata={"env": "TWOPASS_WORKER_STALE_SECONDS"})
    #: EventBridge bus that receives every job's final state (``JobEventsBus``); empty: no events.
    event_bus: str = field(default="", metadata={"env": "TWOPASS_EVENT_BUS"})
    #: Secret that signs completion callbacks (on ECS injected from Secrets Manager).
    callback_secret: str = field(default="", metadata={"env": "TWOPASS_CALLBACK_SECRET"})
    #: Allow callbacks to private, loopback and link-local addresses (local stack and tests only).
    callback_allow_private: bool = field(default=False, metadata={"env": "TWOPASS_CALLBACK_ALLOW_PRIVATE"})
    #: Allow plain-http callback URLs (local stack and tests only).
    callback_allow_http: bool = field(default=False, metadata={"env": "TWOPASS_CALLBACK_ALLOW_HTTP"})
    #: Delivery attempts per callback before giving up (the job is unaffected either way).
    callback_attempts: int = field(default=5, metadata={"env": "TWOPASS_CALLBACK_ATTEMPTS"})
    #: API: the cascade's confidence threshold. A fast top-1 probability at or above it answers the job
    #: at once (``answered_by: fast``) and queues no slow pass; 0 turns the cascade off. Find it with
    #: ``twopass calibrate``.
    cascade_threshold: float = field(default=0.0, metadata={"env": "TWOPASS_CASCADE_THRESHOLD"})
    #: API and worker: serve a repeated image (same bytes, same owner, same model versions) the slow
    #: result already computed, at once and without a queue (off by default).
    result_cache: bool = field(default=False, metadata={"env": "TWOPASS_RESULT_CACHE"})
    #: How long a cached slow result is served after it was computed.
    result_cache_ttl_hours: float = field(default=24.0, metadata={"env": "TWOPASS_RESULT_CACHE_TTL_HOURS"})
    #: Worker: path (or ``s3://`` URI) of a candidate slow model to roll out beside the serving one; empty: none.
    candidate_slow_model: str = field(default="", metadata={"env": "TWOPASS_CANDIDATE_SLOW_MODEL"})
    #: Worker: how the candidate runs: ``shadow`` or ``shadow:<percent>`` (beside the serving model on that
    #: share of batches, recorded, never served), ``canary:<percent>`` (serves that share of jobs); empty: off.
    rollout_mode: str = field(default="", metadata={"env": "TWOPASS_ROLLOUT_MODE"})
    #: API under a long-running server (uvicorn): seconds between metric flushes, each one EMF blob with
    #: every value since the last, and request logs written by a background thread; 0: both per request.
    #: On Lambda metrics always flush and logs always write within the invocation (the sandbox may be
    #: frozen once it has answered).
    metrics_flush_seconds: float = field(default=5.0, metadata={"env": "TWOPASS_METRICS_FLUSH_SECONDS"})
    #: Log level for twopass loggers.
    log_level: str = field(default="INFO", metadata={"env": "TWOPASS_LOG_LEVEL"})
    #: ``json`` (one object a record, as on AWS) or ``text``; empty: JSON on Lambda and ECS, else text.
    log_format: str = field(default="", metadata={"env": "TWOPASS_LOG_FORMAT"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default ``os.environ``), falling back to defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.metadata["env"], str(f.type), raw)
        return cls(**values)

    @property
    def api_key_set(self) -> frozenset[str]:
        """The keys in :attr:`api_keys`, each a tenant of its own."""
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def session_providers(self) -> tuple[str, ...]:
        """:attr:`providers` as a model loads them: each one optional when :attr:`allow_cpu_fallback` is on."""
        if not self.allow_cpu_fallback:
            return self.providers
        return tuple(p if p.endswith("?") else f"{p}?" for p in self.providers)

    @property
    def inference_threads(self) -> int:
        """:attr:`inference_concurrency`, or where it is 0 the rule its documentation gives, for this
        process's cores."""
        if self.inference_concurrency > 0:
            return self.inference_concurrency
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // max(1, self.intra_op_threads)) + 1

    @property
    def io_pool_threads(self) -> int:
        """:attr:`io_threads`, or where it is 0 twice :attr:`inference_threads`, at least 4."""
        return self.io_threads if self.io_threads > 0 else max(4, 2 * self.inference_threads)

    @property
    def job_ttl_seconds(self) -> int:
        return int(self.job_ttl_days * 86400)

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def require(self, *names: str) -> None:
        """Fail early, naming the variables, when a component needs settings that are unset."""
        missing = [f.metadata["env"] for f in fields(self) if f.name in names and not getattr(self, f.name)]
        if missing:
            raise ConfigError(f"missing setting(s): {', '.join(missing)}")


def _parse(name: str, env_name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if type_name.startswith("tuple"):
            return tuple(_provider_name(p) for p in raw.split(",") if p.strip())
        return raw
    except ValueError as exc:
        raise ConfigError(f"{env_name}={raw!r} is not a valid {type_name} for {name}") from exc


_PROVIDER_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _provider_name(raw: str) -> str:
    raw = raw.strip()
    name = raw.removesuffix("?").strip()
    return _PROVIDER_ALIASES.get(name.lower(), name) + ("?" if raw.endswith("?") else "")
