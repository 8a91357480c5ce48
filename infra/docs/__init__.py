"""Scripts that generate parts of the docs from the code and the running stack (``make docs``)."""
