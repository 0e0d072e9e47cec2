"""Caffe layer types: one registered LayerDef class per type, grouped by family module.

``dnntool.layers.all`` imports every family module (so that registration runs); the registry
loads it lazily on first use.
"""
