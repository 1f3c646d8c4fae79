"""Shipped NAF checkpoints (installed as ``naf_cli.models``); each has a model card beside it."""
