"""Our runner against Hugging Face transformers on tiny random checkpoints (fp32, CPU).

Each checkpoint is written with ``save_pretrained`` (safetensors) and read back by our loader. Logits
must match transformers' full forward at every position, whether the sequence runs as one prefill or
as prefill + chunked continuation + single-token decode steps through a paged KV cache with
scattered page ids, and whether it runs alone or in a batch with other sequences.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import transformers

from context_forge.attention import AttentionMetadata
from context_forge.kv.buffer import DeviceKVBuffer
from context_forge.model import ModelConfig, load_model
from context_forge.attention.rope import inverse_frequencies

TOL = 1e-4
PAGE_SIZE = 4
SEQ_LEN = 20
BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 10000.0}

CASES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {}),
    "llama-bias-tied": ("LlamaForCausalLM", "LlamaConfig",
                        {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
    "llama3-rope": ("LlamaForCausalLM", "LlamaConfig", {"rope_parameters": LLAMA3_ROPE}),
    "llama-linear-rope": ("LlamaForCausalLM", "LlamaConfig",
                          {"rope_parameters": {"rope_type": "linear", "factor": 4.0,
                                               "rope_theta": 10000.0}}),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", {"head_dim": 24}),
    "mistral": ("MistralForCausalLM", "MistralConfig", {"sliding_window": 4096}),
}


def _save_checkpoint(root: Path, case: str, shard: bool = False) -> Path:
    arch, config_name, extra = CASES[case]
    config = getattr(transformers, config_name)(**BASE, **extra)
    torch.manual_seed(1234)
    model = getattr(transformers, arch)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    out = root / (case + ("-sharded" if shard else ""))
    model.save_pretrained(out, max_shard_size="40KB" if shard else "50GB")
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    paths = {case: _save_checkpoint(root, case) for case in CASES}
    paths["llama-sharded"] = _save_checkpoint(root, "llama", shard=True)
    return paths


def _hf_logits(path: Path, ids: list[int]) -> torch.Tensor:
    arch = CASES[path.name.removesuffix("-sharded")][0]
    model = getattr(transformers, arch).from_pretrained(path, attn_implementation="eager",
                                                        dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(BASE["vocab_size"]) for _ in range(n)]


class PagedRunner:
    """Test driver: allocates scattered pages per sequence and runs steps through the model."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig, num_pages: int = 64) -> None:
        self.model = model
        self.kv = DeviceKVBuffer(config.num_hidden_layers, num_pages, PAGE_SIZE,
                                 config.num_key_value_heads, config.head_dim, torch.float32)
        self.free = list(range(num_pages))
        random.Random(7).shuffle(self.free)
        self.pages: dict[str, list[int]] = {}
        self.lens: dict[str, int] = {}

    def step(self, chunks: dict[str, list[int]], all_logits: bool = False) -> torch.Tensor:
        q_lens, kv_lens, tables, ids = [], [], [], []
        for sid, new in chunks.items():
            total = self.lens.get(sid, 0) + len(new)
            table = self.pages.setdefault(sid, [])
            while len(table) * PAGE_SIZE < total:
                table.append(self.free.pop())
            self.lens[sid] = total
            q_lens.append(len(new))
            kv_lens.append(total)
            tables.append(list(table))
            ids.extend(new)
        meta = AttentionMetadata.build(q_lens, kv_lens, tables, PAGE_SIZE)
        return self.model(torch.tensor(ids), meta.positions, meta, self.kv, all_logits=all_logits)


@pytest.mark.parametrize("case", sorted(CASES) + ["llama-sharded"])
def test_prefill_and_paged_decode_match_transformers(checkpoints: dict[str, Path], case: str) -> None:
    path = checkpoints[case]
    ids = _tokens(len(case), SEQ_LEN)
    expected = _hf_logits(path, ids)
    assert expected.std() > 0.1, "reference logits should not be degenerate"
    model, config = load_model(path, "safetensors", "float32", "cpu")

    whole = PagedRunner(model, config).step({"s": ids}, all_logits=True)
    assert (whole - expected).abs().max().item() <= TOL

    runner = PagedRunner(model, config)
    got = [runner.step({"s": ids[:7]}, all_logits=True), runner.step({"s": ids[7:13]}, all_logits=True)]
    got += [runner.step({"s": [t]}) for t in ids[13:]]
    assert (torch.cat(got) - expected).abs().max().item() <= TOL


def test_batch_of_mixed_sequences_matches_each_alone(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["qwen3"]
    model, config = load_model(path, "auto", "float32", "cpu")
    seqs = {name: _tokens(i, n) for i, (name, n) in enumerate(
        [("fresh", 9), ("chunked", 11), ("decode_a", 12), ("decode_b", 3), ("one", 1)])}
    prefixes = {"chunked": 6, "decode_a": 11, "decode_b": 2}
    final = {sid: seqs[sid][prefixes.get(sid, 0):] for sid in seqs}

    batched = PagedRunner(model, config)
    batched.step({sid: seqs[sid][:n] for sid, n in prefixes.items()})
    together = batched.step(final)

    for row, sid in enumerate(final):
        alone = PagedRunner(model, config)
        if sid in prefixes:
            alone.step({sid: seqs[sid][: prefixes[sid]]})
        single = alone.step({sid: final[sid]})[0]
        assert (together[row] - single).abs().max().item() <= 1e-5, sid
        reference = _hf_logits(path, seqs[sid])[-1]
        assert (together[row] - reference).abs().max().item() <= TOL, sid


def test_llama3_rope_frequencies_match_transformers() -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = dict(LLAMA3_ROPE, original_max_position_embeddings=8192, rope_theta=500000.0)
    hf_config = transformers.LlamaConfig(**dict(BASE, hidden_size=512, num_attention_heads=4),
                                         rope_parameters=params)
    expected, scale = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    config = ModelConfig.from_hf(hf_config.to_dict())
    assert config.rope_scaling is not None and config.rope_scaling["rope_type"] == "llama3"
    got = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    assert scale == 1.0
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    plain = inverse_frequencies(config.head_dim, config.rope_theta, None)
    assert (got < plain).any() and (got == plain).any(), "some bands scaled, high ones untouched"


def test_tied_checkpoint_has_no_lm_head_and_shares_weights(checkpoints: dict[str, Path]) -> None:
    model, config = load_model(checkpoints["qwen2"], "safetensors", "float32", "cpu")
    assert config.tie_word_embeddings and config.attention_bias and not config.o_proj_bias
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_sharded_checkpoint_has_an_index(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["llama-sharded"]
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("*.safetensors"))) > 1
