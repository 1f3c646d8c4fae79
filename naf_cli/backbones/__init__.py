"""Backbones: a registry of short names and a loader that returns frozen feature extractors."""

from naf_cli.backbones.model import Backbone, BackboneInfo, load_backbone
from naf_cli.backbones.registry import BACKBONES, BackboneSpec, get_spec

__all__ = ["BACKBONES", "Backbone", "BackboneInfo", "BackboneSpec", "get_spec", "load_backbone"]
