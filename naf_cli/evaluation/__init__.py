"""Quality measured, not assumed: the self-supervised reconstruction protocol (``naf eval``)."""
