"""Beam search runs each decoder layer's one-token steps without fairseq's general-purpose paths.

At every decoding step fairseq's ``TransformerDecoderLayerBase.forward`` and ``MultiheadAttention.forward`` walk
through the branches of every feature they support (cross-self-attention, head scaling, xformers, TPU, ONNX,
added key/value biases, zero attention, ...), check shapes with asserts and call each submodule through
``nn.Module.__call__``. With a demo-size model at batch 1 the products are a few microseconds each and that
Python work is most of a step. ``generating`` gives each plain decoder layer, for one generation, a forward that
takes a one-token step with the same torch operations in the same order on the same cache (fairseq's
incremental-state entries, which fairseq's reordering keeps handling; the beamable encoder attention's einsums
where the keys are one a sentence), so that it translates bit for bit as fairseq does. Every call that is not
such a step (the first step, which projects the encoder output; a self-attention padding mask; training;
anything else) runs fairseq's forward. Layers with any feature the step does not have (hooks, dropout at
inference, extra norms or scalings, subclasses) are not given it at all. A decoder whose layers all take lean
steps takes its own part of a step (embeddings, final norm) the lean way too.
Measured in docs/deployment.md ("Lean decoding steps").
"""
import contextlib

import torch
from fairseq.models.transformer import TransformerDecoderBase
from fairseq.modules import MultiheadAttention
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import nn

from .lean_attention import LeanAttention

counts = {"lean": 0, "fairseq": 0, "lean decoder": 0, "fairseq decoder": 0}  # steps taken each way (layers,
# decoders), for tests and benchmarks


def _plain_attention(attention: nn.Module) -> bool:
    return (type(attention).forward is MultiheadAttention.forward
            and type(attention).apply_sparse_mask is MultiheadAttention.apply_sparse_mask
            and attention.bias_k is None and attention.bias_v is None and not attention.add_zero_attn
            and not attention.onnx_trace)


def _plain(layer: nn.Module) -> bool:
    """Whether this decoder layer has only what the lean step does: fairseq's own forward, self- and encoder
    attention, no hooks anywhere in it, no dropout at inference."""
    if type(layer).forward is not TransformerDecoderLayerBase.forward or \
            type(layer).residual_connection is not TransformerDecoderLayerBase.residual_connection:
        return False
    if layer.encoder_attn is None or layer.cross_self_attention or layer.onnx_trace:
        return False
    if any(getattr(layer, name, None) is not None for name in ("c_attn", "attn_ln", "ffn_layernorm", "w_resid")):
        return False
    if not (_plain_attention(layer.self_attn) and _plain_attention(layer.encoder_attn)):
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    return not any(_hooked(module) or module.training or getattr(module, "apply_during_inference", False)
                   for module in layer.modules())


def _hooked(module: nn.Module) -> bool:
    """Whether the module has forward hooks of its own (which the lean step's direct calls would skip)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


class _Layer:
    """What a lean step reads of one decoder layer, looked up once per generation."""
    __slots__ = ("before", "self_norm", "encoder_norm", "final_norm", "fc1", "fc2", "activation",
                 "self_attention", "encoder_attention")

    def __init__(self, layer: nn.Module):
        self.before = layer.normalize_before
        self.self_norm, self.encoder_norm = layer.self_attn_layer_norm.forward, layer.encoder_attn_layer_norm.forward
        self.final_norm, self.activation = layer.final_layer_norm.forward, layer.activation_fn
        self.fc1, self.fc2 = layer.fc1.forward, layer.fc2.forward
        self.self_attention, self.encoder_attention = LeanAttention(layer.self_attn), LeanAttention(layer.encoder_attn)

    def step(self, x: torch.Tensor, incremental_state, need_weights: bool, per_head: bool):
        """One token through the layer (x: 1 x rows x C), fairseq's operations in fairseq's order."""
        residual = x
        if self.before:
            x = self.self_norm(x)
        x = residual + self.self_attention.self_attend(x, incremental_state.setdefault(self.self_attention.key, {}))
        if not self.before:
            x = self.self_norm(x)
        residual = x
        if self.before:
            x = self.encoder_norm(x)
        x, weights = self.encoder_attention.encoder_attend(x, incremental_state[self.encoder_attention.key],
                                                           need_weights, per_head)
        x = residual + x
        if not self.before:
            x = self.encoder_norm(x)
        residual = x
        if self.before:
            x = self.final_norm(x)
        x = self.fc2(self.activation(self.fc1(x)))
        x = residual + x
        if not self.before:
            x = self.final_norm(x)
        return x, weights, None


def _cached(saved, encoder_padding_mask) -> bool:
    """Whether the encoder attention's keys, values and padding are in its cache, as fairseq reads them there."""
    if saved is None or "prev_key" not in saved or "prev_value" not in saved:
        return False
    padding = saved.get("prev_key_padding_mask")
    if padding is None:  # fairseq would take the padding passed in: the lean step reads the cache alone
        return encoder_padding_mask is None
    return padding.dim() != 0


def _leaning(layer: nn.Module):
    fairseq_forward, lean = layer.forward, _Layer(layer)
    self_key, encoder_key = lean.self_attention.key, lean.encoder_attention.key

    def forward(x, encoder_out=None, encoder_padding_mask=None, incremental_state=None, prev_self_attn_state=None,
                prev_attn_state=None, self_attn_mask=None, self_attn_padding_mask=None, need_attn=False,
                need_head_weights=False):
        if (incremental_state is None or layer.training or x.size(0) != 1 or encoder_out is None
                or prev_self_attn_state is not None or prev_attn_state is not None or self_attn_mask is not None
                or self_attn_padding_mask is not None
                or not _cached(incremental_state.get(encoder_key), encoder_padding_mask)
                or incremental_state.get(self_key, {}).get("prev_key_padding_mask") is not None):
            counts["fairseq"] += 1
            return fairseq_forward(x, encoder_out, encoder_padding_mask, incremental_state, prev_self_attn_state,
                                   prev_attn_state, self_attn_mask, self_attn_padding_mask, need_attn,
                                   need_head_weights)
        counts["lean"] += 1
        return lean.step(x, incremental_state, need_attn or need_head_weights or layer.need_attn, need_head_weights)

    return forward


def _plain_decoder(decoder: nn.Module, layers) -> bool:
    """Whether the decoder's own part of a step (embeddings, final norm) has only what the lean step does, and all
    its layers take lean steps."""
    if type(decoder).extract_features is not TransformerDecoderBase.extract_features or \
            type(decoder).extract_features_scriptable is not TransformerDecoderBase.extract_features_scriptable:
        return False
    if decoder.cross_self_attention or decoder.quant_noise is not None or decoder.layernorm_embedding is not None \
            or decoder.project_in_dim is not None or decoder.training or "extract_features" in vars(decoder):
        return False
    if getattr(decoder.dropout_module, "apply_during_inference", False):
        return False
    if not decoder.layers or any(layer not in layers for layer in decoder.layers):
        return False
    parts = [decoder.embed_tokens, decoder.embed_positions, decoder.layer_norm, decoder.project_out_dim]
    return not any(_hooked(module) for part in parts if part is not None for module in part.modules())


def _lean_decoder(decoder: nn.Module, layer_forwards):
    """An extract_features for the decoder instance: a one-token step through the lean layers, or fairseq's."""
    fairseq_features, last = decoder.extract_features, len(layer_forwards) - 1
    embed, scale, pad = decoder.embed_tokens.forward, decoder.embed_scale, decoder.padding_idx
    positions_of, norm, project = decoder.embed_positions, decoder.layer_norm, decoder.project_out_dim

    def extract_features(prev_output_tokens, encoder_out, incremental_state=None, full_context_alignment=False,
                         alignment_layer=None, alignment_heads=None):
        if (incremental_state is None or full_context_alignment or alignment_layer is not None or encoder_out is None
                or decoder.training or prev_output_tokens[:, -1:].eq(pad).any()):
            counts["fairseq decoder"] += 1
            return fairseq_features(prev_output_tokens, encoder_out, incremental_state, full_context_alignment,
                                    alignment_layer, alignment_heads)
        counts["lean decoder"] += 1
        enc = encoder_out["encoder_out"][0] if len(encoder_out["encoder_out"]) > 0 else None
        padding = encoder_out["encoder_padding_mask"][0] if len(encoder_out["encoder_padding_mask"]) > 0 else None
        positions = None
        if positions_of is not None:
            positions = positions_of(prev_output_tokens, incremental_state=incremental_state)[:, -1:]
        x = scale * embed(prev_output_tokens[:, -1:].contiguous())
        if positions is not None:
            x += positions
        x = x.transpose(0, 1)
        attn, inner_states = None, [x]
        for index, forward in enumerate(layer_forwards):
            x, layer_attn, _ = forward(x, enc, padding, incremental_state, need_attn=index == last,
                                       need_head_weights=index == last)
            inner_states.append(x)
            if layer_attn is not None and index == last:
                attn = layer_attn.float().to(x)
        if attn is not None:
            if alignment_heads is not None:
                attn = attn[:alignment_heads]
            attn = attn.mean(dim=0)
        if norm is not None:
            x = norm(x)
        x = x.transpose(0, 1)
        if project is not None:
            x = project(x)
        return x, {"attn": [attn], "inner_states": inner_states}

    return extract_features


@contextlib.contextmanager
def generating(models):
    """Within: each plain transformer decoder layer of the models takes its one-token steps the lean way, and so
    does each decoder whose layers all do."""
    layers = {module: None for model in models for module in model.modules()
              if isinstance(module, TransformerDecoderLayerBase) and "forward" not in vars(module)
              and _plain(module)}
    for layer in layers:
        layers[layer] = layer.forward = _leaning(layer)
    decoders = [model.decoder for model in models if isinstance(getattr(model, "decoder", None), TransformerDecoderBase)
                and _plain_decoder(model.decoder, layers)]
    for decoder in decoders:
        decoder.extract_features = _lean_decoder(decoder, [layers[layer] for layer in decoder.layers])
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
        for decoder in decoders:
            del decoder.extract_features
