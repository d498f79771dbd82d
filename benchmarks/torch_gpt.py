"""The PyTorch twin of SmallMind's GPT (models/gpt.py): the peer every comparison runs against.

Written the way a PyTorch-eager user would write it (nanoGPT style): nn.Linear layers,
F.scaled_dot_product_attention for training, and for inference a preallocated KV cache
filled by `prefill` and extended one token at a time by `decode_step`. Module names
mirror our parameter names (`h.0.attn.qkv.weight` ...), so `from_params` and the
gradient tests can map one onto the other by name.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _heads(self, x):
        # x (B,T,3C) -> q, k, v each (B,H,T,D)
        B, T, _ = x.shape
        q, k, v = x.view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x):
        # x (B,T,C) -> (B,T,C)
        B, T, C = x.shape
        q, k, v = self._heads(self.qkv(x))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))

    def forward_cached(self, x, k_cache, v_cache, pos0):
        # x (B,T,C); k_cache, v_cache (B,H,S_max,D) hold positions < pos0 -> (B,T,C)
        B, T, C = x.shape
        q, k, v = self._heads(self.qkv(x))
        k_cache[:, :, pos0:pos0 + T] = k
        v_cache[:, :, pos0:pos0 + T] = v
        keys, values = k_cache[:, :, :pos0 + T], v_cache[:, :, :pos0 + T]
        scores = (q @ keys.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if T > 1:
            # query t sits at position pos0 + t and sees keys 0 .. pos0 + t
            mask = torch.ones(T, pos0 + T, dtype=torch.bool).tril(diagonal=pos0)
            scores = scores.masked_fill(~mask, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ values
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.act = nn.GELU(approximate="tanh")
        self.down = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        # x (B,T,C) -> (B,T,C)
        return self.dropout(self.down(self.act(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x):
        # x (B,T,C) -> (B,T,C)
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x, k_cache, v_cache, pos0):
        # x (B,T,C) -> (B,T,C)
        x = x + self.attn.forward_cached(self.ln_1(x), k_cache, v_cache, pos0)
        return x + self.mlp(self.ln_2(x))


class TorchGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tied_head:
            self.lm_head.weight = self.wte.weight
        self.k_cache = self.v_cache = None
        self.pos = 0

    @classmethod
    def from_params(cls, params):
        """A TorchGPT holding a copy of our Params' weights."""
        model = cls(params.cfg)
        mapped = model.param_map()
        with torch.no_grad():
            for name, view in params.items():
                mapped[name].copy_(torch.from_numpy(np.ascontiguousarray(view)))
        return model

    def param_map(self) -> dict:
        """Our parameter name -> the torch Parameter holding it."""
        named = dict(self.named_parameters(remove_duplicate=False))
        mapped = {}
        for name, p in named.items():
            if name in ("wte.weight", "wpe.weight"):
                mapped[name[:-len(".weight")]] = p
            elif name == "lm_head.weight":
                if not self.cfg.tied_head:
                    mapped[name] = p
            else:
                mapped[name] = p
        return mapped

    def forward(self, idx):
        # idx (B,T) int64 -> logits (B,T,V)
        T = idx.shape[1]
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T)))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    @torch.inference_mode()
    def prefill(self, idx):
        # idx (B,T) or (T,) ints -> logits of the last position (B,V) or (V,)
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        single = idx.ndim == 1
        if single:
            idx = idx[None]
        B, T = idx.shape
        cfg = self.cfg
        shape = (cfg.n_layers, B, cfg.n_heads, cfg.context_length, cfg.d_model // cfg.n_heads)
        self.k_cache = torch.zeros(shape)
        self.v_cache = torch.zeros(shape)
        self.pos = 0
        logits = self._cached(idx)
        return logits[0] if single else logits

    @torch.inference_mode()
    def decode_step(self, token):
        # token (B,) or a scalar int -> logits (B,V) or (V,); continues the cache filled by prefill
        token = torch.as_tensor(np.asarray(token), dtype=torch.long)
        single = token.ndim == 0
        logits = self._cached(token.reshape(-1, 1))
        return logits[0] if single else logits

    def _cached(self, idx):
        # idx (B,T) -> logits of the last position (B,V); appends T positions to the cache
        T = idx.shape[1]
        if self.k_cache is None or self.pos + T > self.cfg.context_length:
            raise ValueError("KV cache is empty or full: call prefill with a prompt that fits the context")
        x = self.wte(idx) + self.wpe(torch.arange(self.pos, self.pos + T))
        for i, block in enumerate(self.h):
            x = block.forward_cached(x, self.k_cache[i], self.v_cache[i], self.pos)
        self.pos += T
        return self.lm_head(self.ln_f(x[:, -1]))
