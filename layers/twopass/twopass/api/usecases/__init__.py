"""The API's use cases: one request's work from a parsed submission to its answer, across the
services, raising HTTP problems where the caller must be told (``submit`` for ``POST /predict``,
``batches`` for ``POST /batches``, ``uploads`` for a presigned upload's submission, ``control`` for
the job options and the overload check they share)."""
