"""Operator commands behind the CLI: ``calibrate`` (the cascade's threshold), ``cost`` (dollars per
million images), ``plan`` (GPU tasks for a load), ``redrive`` (dead letters back to work). Nothing
here runs in the Lambda or the worker."""
