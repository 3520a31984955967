"""The VLM's language model for inference on a preallocated KV cache: the arithmetic of the HF
forward for Llama-family decoders (Llama, SmolLM2, Mistral, Qwen2), with less in the way.

Why: on a CPU, one decoding step is bounded by reading the weights once. HF's `generate`
reads every matrix in the (out, in) layout, for which MKL's matrix-vector product runs on one
core, and grows its cache token by token. Here
- passes of many tokens (prefill) use the model's own fp32 weights, as HF does;
- passes of one token (fp32) or a few (quantized) use a copy of each matrix laid out for
  the matrix-vector product: fp32 transposed (the same sums, rounding apart), or quantized:
  `"int8"` per output channel with bf16 activations (4x less to read), or `"dynamic"`: int8
  weights and int8 activations quantized per pass (x86 int8 GEMM: the fastest here at every
  pass length up to DYNAMIC_MAX_TOKENS); their speed and accuracy cost are measured in
  docs/EXPERIMENTS.md (int4 weights were as fast as dynamic int8 and cost 16 points of VQA);
- the q/k/v and gate/up matrices of that copy are fused, one product each;
- the cache is written in place, and a pass may attend along any mask, so the structured
  report scores several candidate continuations in one row (a tree), with no cache copy.
"""
import warnings

import torch
import torch.nn.functional as F

from dermvlm.errors import DermvlmError

SUPPORTED = ("llama", "mistral", "qwen2")
QUANTIZE = (None, "int8", "dynamic")
INT8_MAX_TOKENS = 32     # int8 x bf16 beats fp32 GEMM up to about this many rows on a CPU
# dynamic int8 (activations too) on passes up to this many tokens: a report's forced text and
# a chat's new question; a prompt with the image (145 tokens for the default) prefills in
# fp32, since quantizing it moved the VLM's own diagnosis on 6 of 10 held-out reports
DYNAMIC_MAX_TOKENS = 128
# draft tokens checked per decoding pass (dermvlm.vlm.drafts), by weight kind: only where a
# pass of several tokens costs little more than one (dynamic: 7 tokens ~1.3x one; fp32 and
# int8 weight-only passes of a few tokens cost 2-3x one)
DRAFT_TOKENS = {"dynamic": 6}


def unsupported(lm):
    """None when `lm` can run here, else why not (the caller falls back to HF)."""
    config = getattr(lm, "config", None)
    generation = getattr(lm, "generation_config", None)
    if any(getattr(generation, name, None) not in (None, 1.0, 0, [])
           for name in ("repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
                        "begin_suppress_tokens", "sequence_bias")):
        return "generation settings other than suppress_tokens (HF applies them)"
    if getattr(config, "model_type", None) not in SUPPORTED:
        return f"model type {getattr(config, 'model_type', None)!r} (supported: {SUPPORTED})"
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
        return "an MLP other than SwiGLU without bias"
    if getattr(lm, "hf_quantizer", None) is not None or hasattr(lm, "peft_config"):
        return "a quantized or unmerged-adapter LM (merge LoRA first)"
    return None


class KVCache:
    """Keys and values of `capacity` positions for `batch` rows: k, v (L, B, kv_heads,
    capacity, head_dim); `length` slots are filled; `valid` (B, capacity) marks the filled
    slots a later token may see (left padding is not valid). Made and changed only under
    torch.inference_mode, as FastLM runs (no autograd bookkeeping per op: about a quarter of
    a CPU decoding step under no_grad)."""

    @torch.inference_mode()
    def __init__(self, layers, batch, kv_heads, capacity, head_dim, device="cpu"):
        self.k = torch.zeros(layers, batch, kv_heads, capacity, head_dim, device=device)
        self.v = torch.zeros_like(self.k)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.length = 0

    @property
    def capacity(self):
        return self.k.shape[3]

    @torch.inference_mode()
    def grow(self, capacity):
        """Room for `capacity` positions, the filled slots kept."""
        old = self.capacity
        pad = [0, 0, 0, capacity - old]                     # the last-but-one dim grows
        self.k, self.v = F.pad(self.k, pad), F.pad(self.v, pad)
        self.valid = F.pad(self.valid, [0, capacity - old])

    @torch.inference_mode()
    def truncate(self, length):
        """Forget every slot from `length` on (a shared prompt prefix is kept)."""
        self.valid[:, length:] = False
        self.length = length

    @torch.inference_mode()
    def move(self, slots, to):
        """Copy the slots `slots` (list) to `to`, `to` + 1, ... and cut the cache there: the
        chosen branch of a tree pass becomes the sequence."""
        source = torch.tensor(slots, device=self.k.device)
        end = to + len(slots)
        self.k[:, :, :, to:end] = self.k[:, :, :, source]
        self.v[:, :, :, to:end] = self.v[:, :, :, source]
        self.valid[:, to:end] = True
        self.truncate(end)


def _kernel_missing(quantize):
    """What this torch lacks for `quantize`, or None."""
    if quantize == "int8" and not hasattr(torch, "_weight_int8pack_mm"):
        return "torch._weight_int8pack_mm (torch >= 2.4)"
    if quantize == "dynamic" and not (
            hasattr(torch, "quantize_per_channel")
            and {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines)):
        return "torch's x86 (fbgemm) quantized engine: an x86 CPU build of torch"
    return None


class _Linear:
    """Several nn.Linear of one input, fused along the output (q, k, v or gate, up)."""

    def __init__(self, linears, quantize, cpu, groups=None):
        self.linears = linears
        sizes = [m.out_features for m in linears]
        groups = groups or [1] * len(linears)        # outputs returned joined: (q, k), v
        self.sizes = [sum(sizes[sum(groups[:i]):sum(groups[:i + 1])])
                      for i in range(len(groups))]
        # a GPU's GEMM reads the (out, in) layout at full speed: no decode copy there
        self.layout = None if not cpu else quantize or "transposed"
        if self.layout is None:
            return
        weight = torch.cat([m.weight.detach().float() for m in linears])       # (out, in)
        biases = [m.bias for m in linears]
        self.bias = None if biases[0] is None else torch.cat(biases).detach().float()
        if self.layout == "int8":
            scale = weight.abs().amax(1).clamp(min=1e-12) / 127
            self.int8 = (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
            self.scale = scale.to(torch.bfloat16)
        elif self.layout == "dynamic":        # fbgemm/x86 int8 x int8 GEMM, bias inside
            scale = (weight.abs().amax(1).clamp(min=1e-12) / 127).double()
            with warnings.catch_warnings():       # torch marks quantized tensors deprecated
                warnings.simplefilter("ignore")
                codes = torch.quantize_per_channel(weight, scale, torch.zeros_like(scale).long(),
                                                   0, torch.qint8)
                self.packed = torch.ops.quantized.linear_prepack(codes, self.bias)
            self.bias = None
        else:
            self.transposed = weight.t().contiguous()                          # (in, out)

    def __call__(self, x):
        """x (..., in) fp32 -> one (..., out_i) per fused matrix."""
        rows = x.numel() // x.shape[-1]
        if self.layout == "int8" and rows <= INT8_MAX_TOKENS:
            y = torch._weight_int8pack_mm(x.reshape(rows, -1).to(torch.bfloat16), self.int8,
                                          self.scale).float().reshape(*x.shape[:-1], -1)
        elif self.layout == "dynamic" and rows <= DYNAMIC_MAX_TOKENS:
            # activations quantized per pass to 7 bits (reduce_range: no overflow in AVX2's
            # 8-bit multiply-add), weights per output channel
            y = torch.ops.quantized.linear_dynamic(x.reshape(rows, -1).float(), self.packed,
                                                   True).reshape(*x.shape[:-1], -1)
        elif self.layout == "transposed" and rows == 1:
            y = (x.reshape(1, -1) @ self.transposed).reshape(*x.shape[:-1], -1)
        else:                                             # the model's own weights (GEMM)
            outs = [F.linear(x.to(m.weight.dtype), m.weight, m.bias).float()
                    for m in self.linears]
            y = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
            return y.split(self.sizes, dim=-1)
        if self.bias is not None:
            y = y + self.bias
        return y.split(self.sizes, dim=-1)


def _rms_norm(x, weight, eps):
    return F.rms_norm(x, weight.shape, weight.float(), eps)      # one op, fp32 as HF does


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


class FastLM:
    """Inference forward of a merged HF causal LM; see the module's docstring."""

    def __init__(self, lm, quantize=None):
        reason = unsupported(lm)
        if reason:
            raise DermvlmError(f"the fast inference path cannot run {reason}")
        if quantize not in QUANTIZE:
            raise DermvlmError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
        missing = _kernel_missing(quantize)
        if missing:
            raise DermvlmError(f"{quantize} decoding needs {missing}")
        config = lm.config
        self.lm, self.quantize, self.device = lm, quantize, lm.device
        cpu = self.device.type == "cpu"
        self.draft_tokens = DRAFT_TOKENS.get(quantize, 0) if cpu else 0
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or \
            config.hidden_size // config.num_attention_heads
        self.eps = config.rms_norm_eps
        self.layers = []
        for layer in lm.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(dict(
                norm1=layer.input_layernorm.weight, norm2=layer.post_attention_layernorm.weight,
                qkv=_Linear([attn.q_proj, attn.k_proj, attn.v_proj], quantize, cpu,
                            groups=[2, 1]),
                o=_Linear([attn.o_proj], quantize, cpu),
                gate_up=_Linear([mlp.gate_proj, mlp.up_proj], quantize, cpu),
                down=_Linear([mlp.down_proj], quantize, cpu)))
        self.head = _Linear([lm.lm_head], quantize, cpu)
        self.cos = self.sin = torch.empty(0, self.head_dim, device=self.device)

    def _rope(self, positions):
        """cos, sin (B, 1, T, head_dim) for positions (B, T), from the model's own rotary
        embedding (any rope scaling it has), tabled once."""
        need = int(positions.max()) + 1
        if need > self.cos.shape[0]:
            table = torch.arange(max(need, 2 * self.cos.shape[0], 256), device=self.device)
            cos, sin = self.lm.model.rotary_emb(torch.zeros(1, device=self.device), table[None])
            self.cos, self.sin = cos[0].float(), sin[0].float()
        return self.cos[positions][:, None], self.sin[positions][:, None]

    def new_cache(self, batch, capacity):
        return KVCache(len(self.layers), batch, self.kv_heads, capacity, self.head_dim,
                       self.device)

    def embed(self, ids):
        return self.lm.model.embed_tokens(ids).float()

    @torch.inference_mode()
    def forward(self, cache, embeds, valid=None, positions=None, attend=None):
        """Run embeds (B, T, H) as cache slots [length, length + T); returns the last hidden
        states (B, T, H) after the final norm. `valid` (B, T): which new tokens are real
        (left padding is not); `positions` (B, T): their positions (default: each row's
        next ones); `attend` (B, T, length + T) bool: which slots each new token sees
        (default: valid earlier slots and itself)."""
        batch, count, _ = embeds.shape
        start, end = cache.length, cache.length + count
        if end > cache.capacity:
            cache.grow(max(end, 2 * cache.capacity))
        if valid is None:
            valid = torch.ones(batch, count, dtype=torch.bool, device=self.device)
        if positions is None:                   # each row's next ones, past its valid slots
            before = cache.valid[:, :start].sum(1, keepdim=True)
            positions = (before + valid.long().cumsum(1) - 1).clamp(min=0)
        cache.valid[:, start:end] = valid
        if attend is None and not (count == 1 and bool(cache.valid[:, :end].all())):
            causal = torch.ones(count, end, dtype=torch.bool, device=self.device).tril(start)
            attend = cache.valid[:, None, :end] & causal
            own = torch.arange(count, device=self.device)
            attend[:, own, start + own] = True          # a padding token sees itself, no NaN
        mask = None if attend is None else attend[:, None]           # (B, 1, T, S)
        cos, sin = self._rope(positions)
        x = embeds.float()
        for index, layer in enumerate(self.layers):
            h = _rms_norm(x, layer["norm1"], self.eps)
            qk, v = layer["qkv"](h)
            qk = _rotate(qk.view(batch, count, self.heads + self.kv_heads, -1).transpose(1, 2),
                         cos, sin)                          # q and k rotated together
            q, k = qk[:, :self.heads], qk[:, self.heads:]
            cache.k[index, :, :, start:end] = k
            cache.v[index, :, :, start:end] = v.view(batch, count, self.kv_heads,
                                                     -1).transpose(1, 2)
            x = x + layer["o"](self._attend(q, cache.k[index, :, :, :end],
                                            cache.v[index, :, :, :end], mask))[0]
            gate, up = layer["gate_up"](_rms_norm(x, layer["norm2"], self.eps))
            x = x + layer["down"](F.silu(gate) * up)[0]
        cache.length = end
        return _rms_norm(x, self.lm.model.norm.weight, self.eps)

    @staticmethod
    def _attend(q, k, v, mask):
        """q (B, heads, T, d), k and v (B, kv_heads, S, d) -> (B, T, heads * d)."""
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return a.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    def stop_ids(self, tokenizer):
        """The ids that end a reply: the tokenizer's end of sequence and the LM's own."""
        ids = getattr(self.lm.generation_config, "eos_token_id", None)
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        return [tokenizer.eos_token_id] + [i for i in ids if i != tokenizer.eos_token_id]

    def suppressed(self):
        return list(getattr(self.lm.generation_config, "suppress_tokens", None) or [])

    @torch.inference_mode()
    def logits(self, hidden):
        """(..., H) -> fp32 logits (..., V)."""
        return self.head(hidden)[0].float()


def resolve_quantize(choice, device):
    """A --quantize choice -> a QUANTIZE value: "auto" is dynamic int8 on a CPU with the x86
    kernel (the fastest, and as accurate as fp32 on the held-out checks), else fp32."""
    if choice == "auto":
        cpu = torch.device(device).type == "cpu"
        return "dynamic" if cpu and _kernel_missing("dynamic") is None else None
    return None if choice == "none" else choice


def for_vlm(vlm):
    """The VLM's FastLM (made once; quantized weights when vlm.decode_quantize is set), or
    None when its LM cannot run there or vlm.fast_decode is False (HF is used instead)."""
    if not getattr(vlm, "fast_decode", True):
        return None
    quantize = resolve_quantize(getattr(vlm, "decode_quantize", None), vlm.device)
    fast = getattr(vlm, "_fast_lm", None)
    if fast is None or fast.quantize != quantize:
        fast = None if unsupported(vlm.lm) else FastLM(vlm.lm, quantize)
        vlm._fast_lm, vlm._prompt_cache = fast, None
    return fast


def sampling_probs(logits, temperature, top_p):
    """(..., V) logits -> the nucleus distribution (..., V) sampling draws from: softmax at
    `temperature`, the likeliest tokens kept up to the first past `top_p`, normalised."""
    probs = (logits / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p    # keep the first over top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return probs / probs.sum(-1, keepdim=True)


def choose_next(logits, temperature=0.0, top_p=1.0, generator=None):
    """(B, V) logits -> (B,) next tokens: greedy at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = sampling_probs(logits, temperature, top_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.inference_mode()
def decode(fast, cache, logits, max_new_tokens, eos_ids, temperature=0.0, top_p=1.0,
           generator=None, suppress=(), drafter=None):
    """Yield (B,) token ids, one step at a time, starting from the prompt's last logits
    (B, V). `eos_ids`: an id or ids that end a row; a row that has ended writes its first
    end id again (padding) until all have. `suppress`: ids never chosen (the LM's
    generation_config.suppress_tokens, as HF `generate` applies them). `drafter` (batch 1;
    dermvlm.vlm.drafts.Drafter over the prompt): check its drafts, several tokens a pass."""
    eos = torch.tensor([eos_ids] if isinstance(eos_ids, int) else list(eos_ids),
                       device=logits.device)
    suppress = torch.tensor(list(suppress), dtype=torch.long, device=logits.device)
    if drafter is not None and logits.shape[0] == 1:
        yield from _drafted(fast, cache, logits, max_new_tokens, set(eos.tolist()),
                            temperature, top_p, generator, suppress, drafter)
        return
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    for step in range(max_new_tokens):
        logits[:, suppress] = -float("inf")
        token = choose_next(logits, temperature, top_p, generator)
        token = torch.where(done, eos[0], token)
        done |= torch.isin(token, eos)
        yield token
        if bool(done.all()) or step == max_new_tokens - 1 or cache.length >= cache.capacity:
            return
        logits = fast.logits(fast.forward(cache, fast.embed(token[:, None]))[:, -1])


def _verify(rows, draft, temperature, top_p, generator):
    """(how many draft tokens the model keeps, its own next token after them). rows
    (len(draft) + 1, V): the logits after the pending token and after each draft token.
    Greedy: a draft token is kept while it is the argmax. Sampling: kept with the model's
    probability of it, else the next token is drawn from the model's distribution without
    it; this is exactly sampling from the model (speculative sampling, one-point draft)."""
    if temperature <= 0:
        best = rows.argmax(-1).tolist()
        kept = 0
        while kept < len(draft) and best[kept] == draft[kept]:
            kept += 1
        return kept, best[kept]
    for kept, token in enumerate(draft):
        probs = sampling_probs(rows[kept], temperature, top_p)
        if float(torch.rand((), generator=generator)) >= float(probs[token]):
            probs[token] = 0
            return kept, int(torch.multinomial(probs, 1, generator=generator))
    probs = sampling_probs(rows[len(draft)], temperature, top_p)
    return len(draft), int(torch.multinomial(probs, 1, generator=generator))


def _drafted(fast, cache, logits, max_new_tokens, eos, temperature, top_p, generator,
             suppress, drafter):
    """decode at batch 1 with drafts: each pass runs the pending token and its draft; the
    pending token is yielded before its pass, the draft tokens the model keeps after it.
    The cache is cut back before any of them is yielded, so it never holds a rejected draft
    token (a chat's next turn reuses it)."""
    logits[:, suppress] = -float("inf")
    pending = int(choose_next(logits, temperature, top_p, generator)[0])
    produced = 0
    while True:
        produced += 1
        yield torch.tensor([pending], device=logits.device)
        if pending in eos or produced >= max_new_tokens or cache.length >= cache.capacity:
            return
        drafter.append(pending)
        room = min(max_new_tokens - produced, cache.capacity - cache.length - 1)
        draft = drafter.propose(min(fast.draft_tokens, room))
        start = cache.length
        ids = torch.tensor([[pending] + draft], device=logits.device)
        rows = fast.logits(fast.forward(cache, fast.embed(ids))[0])     # (1 + draft, V)
        rows[:, suppress] = -float("inf")
        kept, pending = _verify(rows, draft, temperature, top_p, generator)
        cache.truncate(start + 1 + kept)                # the rejected draft's slots are free
        for token in draft[:kept]:
            produced += 1
            drafter.append(token)
            yield torch.tensor([token], device=logits.device)
            if token in eos or produced >= max_new_tokens:
                return
