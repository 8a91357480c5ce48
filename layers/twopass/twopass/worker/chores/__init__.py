"""The worker's periodic chores beside its batches: the reconciler (never-started jobs re-sent) and the
dead-letter sweep (why jobs landed in a DLQ, recorded on them)."""
