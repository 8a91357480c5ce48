"""The Open Inference Protocol (KServe v2): its messages and tensors (``codec``) and its routes (``routes``)."""
