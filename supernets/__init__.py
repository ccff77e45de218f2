"""Weights: static blocks and models (and, as they arrive, the elastic supernet, training, data, checkpoints)."""

from supernets.blocks import BLOCK_KINDS, FusedMBConv, InvertedResidual, ShuffleV2Unit, build_block
from supernets.layers import ConvBNAct, SqueezeExcite, get_act_layer
from supernets.models import StaticNet, build_model

__all__ = [
    "BLOCK_KINDS", "ConvBNAct", "FusedMBConv", "InvertedResidual", "ShuffleV2Unit", "SqueezeExcite", "StaticNet",
    "build_block", "build_model", "get_act_layer",
]
