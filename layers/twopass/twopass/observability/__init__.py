"""Logs, metrics and traces: JSON logs with correlation ids, CloudWatch EMF metrics, X-Ray."""

from twopass.observability.logs import configure, job_extra
from twopass.observability.metrics import Metric, MetricsSink

__all__ = ["Metric", "MetricsSink", "configure", "job_extra"]
