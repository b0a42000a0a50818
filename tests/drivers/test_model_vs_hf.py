"""TorchEngine against Hugging Face transformers on the same randomly initialised weights.

Each case builds a tiny model from a config (GQA, MQA, tied and untied heads, Qwen2's q/k/v bias,
several rope_theta values, every supported rope_scaling type, a sliding window, an explicit
head_dim), saves it with save_pretrained into tmp_path, and loads it through checkpoint.py.
Logits must agree within 1e-4 at every prefill position and at every decode step, where
transformers runs with its own past_key_values; greedy continuations must be identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llmos.drivers.engine import TorchEngine  # noqa: E402
from llmos.kernel.batch import SamplingParams, SeqChunk, StepBatch  # noqa: E402

# transformers 5 renamed past_key_values to cache; the old name still works, and 4.x needs it.
pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

ATOL = 1e-4
BLOCK_SIZE = 4
GREEDY = SamplingParams(temperature=0.0)


BASE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 256,
    # Larger than the default 0.02, so logits are spread out and greedy choices are not near-ties.
    "initializer_range": 0.25,
    "eos_token_id": None,
    "bos_token_id": None,
    "pad_token_id": None,
}

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-gqa-untied": ("llama", {"rope_theta": 10000.0, "tie_word_embeddings": False}),
    "llama-mqa-tied": (
        "llama",
        {"num_key_value_heads": 1, "rope_theta": 500000.0, "tie_word_embeddings": True},
    ),
    "llama-mha-bias-headdim": (
        "llama",
        {"num_key_value_heads": 4, "head_dim": 32, "attention_bias": True, "rope_theta": 100.0},
    ),
    "qwen2-bias-tied": ("qwen2", {"rope_theta": 1000000.0, "tie_word_embeddings": True}),
    "mistral-window": (
        "mistral",
        {"rope_theta": 1000000.0, "sliding_window": 6, "num_hidden_layers": 3},
    ),
    "llama-rope-linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llama-rope-dynamic": (
        "llama",
        {"max_position_embeddings": 12, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
    ),
    "llama-rope-llama3": (
        "llama",
        {
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    "qwen2-rope-yarn": (
        "qwen2",
        {
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
    ),
}

CONFIG_CLASSES = {
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
    "qwen2": "Qwen2Config",
}
MODEL_CLASSES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


def build_hf_model(family: str, overrides: dict[str, Any], path: Path) -> Any:
    """A randomly initialised float32 HF model, saved as safetensors into ``path``."""
    config_cls = getattr(transformers, CONFIG_CLASSES[family])
    model_cls = getattr(transformers, MODEL_CLASSES[family])
    config = config_cls(**{**BASE, **overrides})
    torch.manual_seed(0)
    model = model_cls(config).to(torch.float32).eval()
    model.save_pretrained(path)
    return model


def engine_for(path: Path, num_blocks: int = 64) -> TorchEngine:
    """A CPU float32 engine with the checkpoint at ``path`` loaded and a small KV pool."""
    engine = TorchEngine(device="cpu", dtype=torch.float32)
    engine.load_model(path)
    engine.init_kv(num_blocks, BLOCK_SIZE)
    return engine


def chunk(tokens: list[int], start: int, table: list[int], sample: bool = True) -> StepBatch:
    """A batch holding one sequence's chunk."""
    return StepBatch([SeqChunk(0, tokens, start, table, sample, GREEDY)], BLOCK_SIZE)


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, TorchEngine]:
    family, overrides = CASES[request.param]
    hf = build_hf_model(family, overrides, tmp_path)
    return hf, engine_for(tmp_path)


def test_logits_match_at_every_prefill_position_and_decode_step(
    case: tuple[Any, TorchEngine],
) -> None:
    hf, engine = case
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, BASE["vocab_size"], (11,), generator=gen).tolist()
    num_decode = 7
    table = list(range(8))  # 32 positions, enough for prompt + decode

    with torch.no_grad():
        ref = hf(torch.tensor([prompt]), use_cache=True)
    out = engine.step_with_logits(chunk(prompt, 0, table), all_positions=True)
    torch.testing.assert_close(out.logits, ref.logits[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(engine.forward_dense(prompt), ref.logits[0], atol=ATOL, rtol=0)

    past, pos = ref.past_key_values, len(prompt)
    token = int(ref.logits[0, -1].argmax())
    assert out.result.tokens == [token]
    for _ in range(num_decode):
        with torch.no_grad():
            ref = hf(torch.tensor([[token]]), past_key_values=past, use_cache=True)
        past = ref.past_key_values
        step = engine.step_with_logits(chunk([token], pos, table))
        torch.testing.assert_close(step.logits, ref.logits[0, -1:], atol=ATOL, rtol=0)
        token = int(ref.logits[0, -1].argmax())
        assert step.result.tokens == [token]
        pos += 1


def test_greedy_continuation_matches_generate(case: tuple[Any, TorchEngine]) -> None:
    hf, engine = case
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, BASE["vocab_size"], (9,), generator=gen).tolist()
    num_new = 10
    with torch.no_grad():
        expected = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=num_new,
            min_new_tokens=num_new,
            do_sample=False,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()

    table = list(range(8))
    got: list[int] = []
    result = engine.step(chunk(prompt, 0, table))
    while True:
        token = result.tokens[0]
        assert token is not None
        got.append(token)
        if len(got) == num_new:
            break
        result = engine.step(chunk([token], len(prompt) + len(got) - 1, table))
    assert got == expected
