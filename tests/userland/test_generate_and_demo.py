"""``llmos generate`` and ``llmos demo`` on a tiny random model with a real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_fixtures import write_checkpoint, write_tokenizer

from llmos.userland.cli import main


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny"
    write_tokenizer(path, vocab_size=300)
    write_checkpoint(path, vocab_size=300)
    return path


def test_generate_prompts_file_prints_one_json_line_per_process(model, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "def main():", "max_tokens": 5, "temperature": 0}) + "\n"
        + json.dumps({"prompt_ids": [1, 2, 3], "max_tokens": 3, "tenant": "bob", "nice": 5}) + "\n"
        + json.dumps({"prompt_ids": [9999]}) + "\n"
    )
    status = main(["generate", "--model", str(model), "--prompts", str(prompts), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1  # one request failed, the others ran
    by_line = {line["line"]: line for line in lines}
    assert by_line[3]["error"]["errno"] == "EINVAL" and by_line[3]["pid"] is None
    assert len(by_line[1]["tokens"]) == 5 and isinstance(by_line[1]["text"], str)
    assert by_line[1]["finish_reason"] == "length" and 0 < by_line[1]["ttft_s"] <= by_line[1]["e2e_s"]
    assert len(by_line[2]["tokens"]) == 3 and "text" not in by_line[2]


def test_generate_is_deterministic_for_a_seed(model, capsys):
    args = ["generate", "--model", str(model), "--prompt", "import os", "--max-tokens", "6", "--seed", "4", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == first["tokens"]


@pytest.mark.parametrize(
    "content, fragment",
    [("not json\n", "line 1: not JSON"), ('{"prompt": "a", "prompt_ids": [1]}\n', "exactly one of"),
     ('{"prompt": "a", "colour": 1}\n', "unknown field 'colour'"), ("\n", "no requests")],
)
def test_generate_bad_prompts_file_is_a_usage_error(model, tmp_path, capsys, content, fragment):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text(content)
    assert main(["generate", "--model", str(model), "--prompts", str(prompts)]) == 2
    assert fragment in capsys.readouterr().err


def test_generate_missing_model_directory_is_a_usage_error(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err


def test_demo_runs_eight_processes_and_summarizes(model, capsys):
    assert main(["demo", "--model", str(model), "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "Summary" in out and "tokens_per_s" in out
    assert out.count("length") >= 8  # every process ran to its length limit
