"""Job messages and the queues that carry them."""

from twopass.queue.base import Delivery, JobMessage, JobPublisher, MessageSource

__all__ = ["Delivery", "JobMessage", "JobPublisher", "MessageSource"]
