"""llmsh, first form: -c and script files, commands, shell-like errors and exit statuses."""

from __future__ import annotations

import pytest
from model_fixtures import write_checkpoint, write_tokenizer

from llmos.userland.llmsh import main, split_commands


def test_split_commands_quotes_semicolons_and_comments():
    assert split_commands('run "a; b" --max-tokens 3; ps # note') == [["run", "a; b", "--max-tokens", "3"], ["ps"]]
    assert split_commands("  ;; ") == []


def test_commands_run_against_an_in_process_kernel(capsys):
    status = main(["--device", "sim", "-c", "run --ids 1,2,3 --max-tokens 5 --seed 7; ps; uname; free"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert len(out.splitlines()[0].split()) == 5  # five token ids streamed
    assert "PID" in out and "sim0 (sim, emulated)" in out and "prefix hit" in out


@pytest.mark.parametrize(
    "line, status, message",
    [
        ("kill 999", 1, "llmsh: kill: 999: no such process (ESRCH)"),
        ("wait", 1, "llmsh: wait: no child processes (ECHILD)"),
        ("nice 5", 2, "usage: nice PID VALUE"),
        ("run", 2, "give a PROMPT or --ids"),
        ("run --ids 1,x", 2, "expected comma-separated integers"),
        ("format c:", 127, "llmsh: format: command not found"),
        ("run hello", 1, "(EINVAL)"),  # the sim model has no tokenizer
    ],
)
def test_errors_read_like_a_shells(capsys, line, status, message):
    assert main(["--device", "sim", "-c", line]) == status
    assert message in capsys.readouterr().err


def test_script_file_and_exit_status(tmp_path, capsys):
    script = tmp_path / "jobs.llmsh"
    script.write_text("# a comment\nrun --ids 4,5 --max-tokens 2\nkill 4242\nexit 3\nps\n")
    assert main(["--device", "sim", str(script)]) == 3
    assert "ESRCH" in capsys.readouterr().err
    assert main(["--device", "sim", str(tmp_path / "missing")]) == 127


def test_run_prompt_streams_text_from_a_model_with_a_tokenizer(tmp_path, capsys):
    model = tmp_path / "tiny"
    write_tokenizer(model, vocab_size=300)
    write_checkpoint(model, vocab_size=300)
    assert main(["--model", str(model), "-c", "run --max-tokens 6 --temperature 0 'def main():'; free"]) == 0
    out = capsys.readouterr().out
    assert out.strip() and "cpu0" in out


def test_background_jobs_jobs_fg_bg_and_job_specs(capsys):
    line = ("run --ids 1,2 --max-tokens 40 &; run --ids 3 --max-tokens 30 &; kill -STOP %1; jobs; "
            "bg %1; fg %2; wait %1; jobs; kill %9")
    assert main(["--device", "sim", "-c", line]) == 2  # the last command: no such job
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[0] == "[1]" and lines[1].split()[0] == "[2]"
    assert any(row.startswith("[1]") and "Stopped" in row for row in lines)
    assert len(next(row for row in lines if row.count(" ") >= 29).split()) == 30  # fg streamed job 2
    assert any("length" in row for row in lines)  # wait %1 reaped job 1
    assert "%9: no such job" in err
