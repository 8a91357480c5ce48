"""The API's services: what it does for a caller with no HTTP in sight (no FastAPI import here).

``service.TwopassService`` wires them: the enqueue path (``intake``), an owner's jobs (``jobcontrol``),
health and the slow card (``health``), Idempotency-Key claims (``idempotency``) and the jobs answered
without a slow pass (``shortcuts``: the cascade and the result cache).
"""
