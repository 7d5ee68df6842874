"""An independent, straightforward ChatGLM2/3 forward pass for tests, in the published module layout.

Written from the architecture's public description, not from transformers' GLM code or ChatGLM's
remote code:

    embeddings -> N x [ RMSNorm -> fused QKV (bias) with multi-query groups -> rotary on the first half
    of each head's dims, interleaved pairs, base 10000 * rope_ratio -> causal softmax attention ->
    dense (no bias) -> residual -> RMSNorm -> dense_h_to_4h -> SwiGLU silu(first half) * second half
    -> dense_4h_to_h -> residual ] -> final RMSNorm -> output_layer

Parameter names are the published checkpoint's (``transformer.encoder.layers.N.self_attention.
query_key_value.weight`` ...), so ``state_dict()`` *is* a checkpoint in the published layout and PEFT
adapters attached to this model carry the original module names. Everything is written out with
explicit loops and plain tensor ops so it is easy to check by eye; speed does not matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class ReferenceConfig:
    num_layers: int = 2
    hidden_size: int = 48
    ffn_hidden_size: int = 80
    kv_channels: int = 16
    num_attention_heads: int = 4
    multi_query_attention: bool = True
    multi_query_group_num: int = 2
    padded_vocab_size: int = 512
    seq_length: int = 256
    layernorm_epsilon: float = 1e-5
    rope_ratio: float = 1.0
    add_qkv_bias: bool = True

    @property
    def groups(self) -> int:
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads

    def config_json(self, name_or_path: str = "THUDM/chatglm3-6b") -> dict:
        """A ``config.json`` in the published ChatGLM layout (fields as the real one names them)."""
        return {
            "_name_or_path": name_or_path,
            "model_type": "chatglm",
            "architectures": ["ChatGLMModel"],
            "auto_map": {
                "AutoConfig": "configuration_chatglm.ChatGLMConfig",
                "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            },
            "add_bias_linear": False,
            "add_qkv_bias": self.add_qkv_bias,
            "apply_query_key_layer_scaling": True,
            "apply_residual_connection_post_layernorm": False,
            "attention_dropout": 0.0,
            "attention_softmax_in_fp32": True,
            "bias_dropout_fusion": True,
            "ffn_hidden_size": self.ffn_hidden_size,
            "fp32_residual_connection": False,
            "hidden_dropout": 0.0,
            "hidden_size": self.hidden_size,
            "kv_channels": self.kv_channels,
            "layernorm_epsilon": self.layernorm_epsilon,
            "multi_query_attention": self.multi_query_attention,
            "multi_query_group_num": self.multi_query_group_num,
            "num_attention_heads": self.num_attention_heads,
            "num_layers": self.num_layers,
            "original_rope": True,
            "padded_vocab_size": self.padded_vocab_size,
            "post_layer_norm": True,
            "rmsnorm": True,
            "rope_ratio": self.rope_ratio,
            "seq_length": self.seq_length,
            "use_cache": True,
            "torch_dtype": "float32",
            "tie_word_embeddings": False,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "quantization_bit": 0,
            "pre_seq_len": None,
            "prefix_projection": False,
        }


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding on the first half of the last dim, pairs (0,1), (2,3), ... rotated together.

    x: [batch, seq, heads, head_dim]; positions: [seq] absolute positions.
    Pair i of the rotated half turns by angle position * base ** (-2i / rotary_dims).
    """
    head_dim = x.shape[-1]
    rotary_dims = head_dim // 2
    out = x.clone()
    for i in range(rotary_dims // 2):
        theta = base ** (-2 * i / rotary_dims)
        angle = positions.to(torch.float64) * theta
        cos = torch.cos(angle).to(x.dtype)[None, :, None]
        sin = torch.sin(angle).to(x.dtype)[None, :, None]
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i] = a * cos - b * sin
        out[..., 2 * i + 1] = b * cos + a * sin
    return out


class SelfAttention(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.cfg = cfg
        heads, groups, d = cfg.num_attention_heads, cfg.groups, cfg.kv_channels
        self.query_key_value = nn.Linear(cfg.hidden_size, (heads + 2 * groups) * d, bias=cfg.add_qkv_bias)
        self.dense = nn.Linear(heads * d, cfg.hidden_size, bias=False)

    def split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        b, s, _ = qkv.shape
        heads, groups, d = cfg.num_attention_heads, cfg.groups, cfg.kv_channels
        if cfg.multi_query_attention:
            q = qkv[..., : heads * d].reshape(b, s, heads, d)
            k = qkv[..., heads * d : (heads + groups) * d].reshape(b, s, groups, d)
            v = qkv[..., (heads + groups) * d :].reshape(b, s, groups, d)
        else:  # per head [q_h k_h v_h]
            per_head = qkv.reshape(b, s, heads, 3 * d)
            q, k, v = per_head[..., :d], per_head[..., d : 2 * d], per_head[..., 2 * d :]
        return q, k, v

    def forward(self, x, positions, cache, prefix_len):
        """cache: None or (keys, values) [b, seq_so_far, groups, d] including any prefix."""
        cfg = self.cfg
        base = 10000.0 * cfg.rope_ratio
        q, k, v = self.split(self.query_key_value(x))
        q, k = rotate(q, positions, base), rotate(k, positions, base)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=1)
            v = torch.cat([cache[1], v], dim=1)
        new_cache = (k, v)
        b, s, heads, d = q.shape
        per_group = heads // k.shape[2]
        outputs = []
        for h in range(heads):
            g = h // per_group  # heads share key/value groups in order
            scores = q[:, :, h] @ k[:, :, g].transpose(1, 2) / math.sqrt(d)  # [b, s, total]
            total = k.shape[1]
            key_pos = torch.arange(total) - prefix_len  # prefix keys sit at negative positions
            allowed = (key_pos[None, :] <= positions[:, None]) | (key_pos[None, :] < 0)
            scores = scores.masked_fill(~allowed[None], float("-inf"))
            outputs.append(torch.softmax(scores, dim=-1) @ v[:, :, g])
        return self.dense(torch.cat(outputs, dim=-1)), new_cache


class MLP(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.hidden_size, 2 * cfg.ffn_hidden_size, bias=False)
        self.dense_4h_to_h = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        first, second = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(first) * second)


class Block(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)
        self.self_attention = SelfAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x, positions, cache, prefix_len):
        attn, cache = self.self_attention(self.input_layernorm(x), positions, cache, prefix_len)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class Encoder(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)


class Embedding(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.padded_vocab_size, cfg.hidden_size)


class RotaryBuffer(nn.Module):
    """Published checkpoints carry this (unused) buffer; kept so state_dict() matches them."""

    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        dims = cfg.kv_channels // 2
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dims, 2).float() / dims)))


class Transformer(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.embedding = Embedding(cfg)
        self.rotary_pos_emb = RotaryBuffer(cfg)
        self.encoder = Encoder(cfg)
        self.output_layer = nn.Linear(cfg.hidden_size, cfg.padded_vocab_size, bias=False)


class ReferenceChatGLM(nn.Module):
    """``forward(input_ids, past)`` -> ``(logits, past)``; ``past`` is a per-layer list of (k, v)."""

    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = Transformer(cfg)

    def forward(self, input_ids: torch.Tensor, past=None, prefix_len: int = 0):
        seen = 0 if past is None else past[0][0].shape[1] - prefix_len
        positions = torch.arange(seen, seen + input_ids.shape[1])
        x = self.transformer.embedding.word_embeddings(input_ids)
        new_past = []
        for i, layer in enumerate(self.transformer.encoder.layers):
            x, cache = layer(x, positions, None if past is None else past[i], prefix_len)
            new_past.append(cache)
        x = self.transformer.encoder.final_layernorm(x)
        return self.transformer.output_layer(x), new_past

    @torch.no_grad()
    def greedy(self, input_ids: torch.Tensor, steps: int) -> tuple[list[int], list[torch.Tensor]]:
        """Greedy decoding with the KV cache; the chosen ids and each step's next-token logits."""
        logits, past = self(input_ids)
        chosen, step_logits = [], []
        for _ in range(steps):
            last = logits[:, -1]
            step_logits.append(last)
            token = int(last.argmax(-1))
            chosen.append(token)
            logits, past = self(torch.tensor([[token]]), past)
        return chosen, step_logits


def random_reference_model(cfg: ReferenceConfig, seed: int = 0) -> ReferenceChatGLM:
    """Random weights large enough that every part of the network moves the logits."""
    torch.manual_seed(seed)
    model = ReferenceChatGLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("word_embeddings.weight"):
                p.normal_(0.0, 1.0)
            elif p.ndim == 1:
                p.normal_(0.0, 0.2)
            else:
                p.normal_(0.0, 1.5 / math.sqrt(p.shape[1]))
    return model.eval()
