"""llmsh without a terminal: -c, scripts and piped stdin; commands, pipes, redirections, exit statuses.

Every ``main([...])`` here boots a sim kernel in-process. The terminal side (Ctrl-C, Ctrl-Z,
line editing, ``top`` refreshing in place) is tests/e2e/test_llmsh_pty.py.
"""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
from model_fixtures import write_checkpoint, write_tokenizer

from llmos.userland.llmsh import CommandCompleter, main, split_commands
from llmos.userland.llmsh_builtins import cmd_models
from llmos.userland.llmsh_jobs import Job, JobTable, OutputWriter, exit_status
from llmos.userland.llmsh_parse import ShellError, UsageError, parse_line, parse_run_args

SIM = ["--device", "sim"]


def sh(line: str) -> int:
    return main([*SIM, "-c", line])


# -- the grammar ---------------------------------------------------------------------------------


def test_split_commands_quotes_semicolons_and_comments():
    assert split_commands('run "a; b" --max-tokens 3; ps # note') == [["run", "a; b", "--max-tokens", "3"], ["ps"]]
    assert split_commands("  ;; ") == []


def test_parse_line_pipes_redirections_and_background():
    first, second, third = parse_line("run --ids 1,2 &; run 'x | y' | run \"say \\\"hi\\\"\" >> out.txt; ps>f")
    assert first.commands == [["run", "--ids", "1,2"]] and first.background
    assert second.commands == [["run", "x | y"], ["run", 'say "hi"']] and second.redirect == (">>", "out.txt")
    assert third.commands == [["ps"]] and third.redirect == (">", "f") and not third.background
    assert second.text == "run 'x | y' | run 'say \"hi\"' >> out.txt"
    assert parse_line("run a\\;b '' #c") [0].commands == [["run", "a;b", ""]]


@pytest.mark.parametrize("line, near", [("| ps", "'|'"), ("ps |", "'newline'"), ("ps >", "'newline'"),
                                        ("ps > | run", "'|'"), ("&", "'&'"), ("run x > f | run y", "'|'")])
def test_parse_line_syntax_errors(line, near):
    with pytest.raises(UsageError, match=f"syntax error near unexpected token {near}"):
        parse_line(line)
    with pytest.raises(UsageError, match="unterminated quote"):
        parse_line("run 'open")


def test_parse_run_args():
    request = parse_run_args(["-v", "def", "main():", "--seed", "3", "--top-k", "5"])
    assert request.verbose and request.options["prompt"] == "def main():"
    assert request.options["seed"] == 3 and request.options["top_k"] == 5
    assert parse_run_args(["--ids", "1,2"]).options["prompt_ids"] == [1, 2]
    assert "prompt" not in parse_run_args([], piped=True).options
    with pytest.raises(UsageError, match="unknown option --bogus"):
        parse_run_args(["--bogus", "x"])


# -- job table, exit statuses, output ------------------------------------------------------------


def test_job_table_numbers_and_current_job():
    jobs = JobTable()
    one, two = jobs.add(Job(7, "run a &", False)), jobs.add(Job(8, "run b &", False))
    assert (one.number, two.number) == (1, 2)
    assert jobs.find("%+") is two and jobs.find("%%") is two and jobs.find("%-") is one and jobs.find("%1") is one
    jobs.touch(one)  # stopped or continued: it becomes current
    assert jobs.mark(one) == "+" and jobs.mark(two) == "-"
    assert jobs.line(one, "Stopped") == "[1]+ Stopped  run a &"
    jobs.remove(7)
    assert jobs.add(Job(9, "run c", False)).number == 3  # one past the highest in use
    with pytest.raises(ShellError, match="%5: no such job"):
        jobs.find("%5")


def test_exit_status_like_sh():
    assert exit_status({"reason": "length"}) == 0 and exit_status({"reason": "stop"}) == 0
    assert exit_status({"reason": "signal", "signal": "SIGKILL"}) == 137
    assert exit_status({"reason": "signal", "signal": "SIGTERM"}) == 143
    assert exit_status({"reason": "error", "errno": "ENOMEM"}) == 1


async def test_output_writer_holds_back_a_split_character():
    class Detokenizer:  # token 1 is half of a character, 2 completes it
        async def detokenize(self, ids):
            return "é" if ids[-1] == 2 else "a" * (len(ids) - 1) + "\ufffd"

    out = io.StringIO()
    writer = OutputWriter(Detokenizer(), text=True, out=out)
    await writer.write([1])
    assert out.getvalue() == ""
    await writer.write([2])
    await writer.flush()
    assert out.getvalue() == "é\n"
    ids = io.StringIO()
    writer = OutputWriter(None, text=False, out=ids)
    await writer.write([1, 2])
    await writer.write([3])
    await writer.flush()
    assert ids.getvalue() == "1 2 3\n"


def test_completion_of_commands_jobs_and_signals():
    jobs = JobTable()
    jobs.add(Job(4, "run x &", False))
    completer = CommandCompleter(SimpleNamespace(commands={"lsdev": None, "load": None, "kill": None, "help": None}, jobs=jobs))
    assert completer.candidates("ls") == ("ls", ["lsdev"])
    assert completer.candidates("ps; l") == ("l", ["lsdev", "load"])
    assert completer.candidates("kill %") == ("%", ["%1"])
    assert completer.candidates("kill -K") == ("-K", ["-KILL"])
    assert completer.candidates("help lo") == ("lo", ["load"])
    assert completer.candidates("run x ") == ("", [])


# -- commands against a kernel -------------------------------------------------------------------


def test_commands_run_against_an_in_process_kernel(capsys):
    status = sh("run --ids 1,2,3 --max-tokens 5 --seed 7; ps; uname; free; lsdev")
    out, err = capsys.readouterr()
    assert status == 0, err
    assert len(out.splitlines()[0].split()) == 5  # five token ids streamed
    assert "PID" in out and "sim0 (sim, emulated)" in out and "prefix hit" in out
    assert re.search(r"^sim0\s+sim\s+emulated\s+sim\s+\d+/\d+", out, re.M), out  # lsdev's row


@pytest.mark.parametrize(
    "line, status, message",
    [
        ("kill 999", 1, "llmsh: kill: 999: no such process (ESRCH)"),
        ("kill -HUP 999", 2, "llmsh: kill: HUP: invalid signal specification"),
        ("kill %3", 1, "llmsh: kill: %3: no such job"),
        ("kill 1", 1, "llmsh: kill: 1: init (pid 1) cannot be signalled (EPERM)"),
        ("wait", 1, "llmsh: wait: no child processes (ECHILD)"),
        ("fg", 1, "llmsh: fg: current: no such job"),
        ("fg 999", 1, "llmsh: fg: 999: no such process (ESRCH)"),
        ("nice 5", 2, "llmsh: nice: usage: nice PID|%JOB VALUE"),
        ("run", 2, "give a PROMPT or --ids"),
        ("run --ids 1,x", 2, "expected comma-separated integers"),
        ("format c:", 127, "llmsh: format: command not found"),
        ("run hello", 1, "llmsh: run: model 'sim' has no tokenizer"),  # the sim model has none
        ("run --ids 1 | ", 2, "llmsh: syntax error near unexpected token 'newline'"),
        ("ps | ps", 2, "llmsh: ps: reads no input; only run takes a pipe"),
        ("ps &", 2, "llmsh: ps: only a plain run goes to the background (&)"),
        ("top -n 0", 2, "usage: top [-n FRAMES] [-d SECONDS]"),
        ("exit abc", 2, "llmsh: exit: abc: numeric argument required"),
    ],
)
def test_errors_read_like_a_shells(capsys, line, status, message):
    assert sh(line) == status
    assert message in capsys.readouterr().err


def test_exit_status_is_the_last_commands(capsys):
    assert sh("kill 999; ps") == 0
    assert sh("ps; kill 999") == 1
    assert sh("exit 7; ps") == 7
    assert sh("run --ids 1 --max-tokens 60000 &; kill -KILL %1; wait %1") == 137  # 128 + SIGKILL
    assert sh("run --ids 1 --max-tokens 3 &; wait") == 0


def test_script_file_and_exit_status(tmp_path, capsys):
    script = tmp_path / "jobs.llmsh"
    script.write_text("# a comment\nrun --ids 4,5 --max-tokens 2\nkill 4242\nexit 3\nps\n")
    assert main([*SIM, str(script)]) == 3
    assert "ESRCH" in capsys.readouterr().err
    assert main([*SIM, str(tmp_path / "missing")]) == 127


def test_background_jobs_jobs_fg_bg_and_job_specs(capsys):
    line = ("run --ids 1,2 --max-tokens 40 &; run --ids 3 --max-tokens 30 &; kill -STOP %1; jobs; "
            "bg %1; fg %2; wait %1; jobs; kill %9")
    assert sh(line) == 1  # the last command: no such job
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[0] == "[1]" and lines[1].split()[0] == "[2]"
    assert any(row.startswith("[1]") and "Stopped" in row for row in lines)
    assert "[1]+ run --ids 1,2 --max-tokens 40 &" in lines  # bg: it is the current job now
    assert len(next(row for row in lines if row.count(" ") >= 29).split()) == 30  # fg streamed job 2
    assert any("length" in row for row in lines)  # wait %1 reaped job 1
    assert "%9: no such job" in err


def test_pipe_appends_output_ids_to_the_next_prompt(capsys):
    assert sh("run --ids 1,2 --max-tokens 5 | run -v --ids 9 --max-tokens 3") == 0
    out, err = capsys.readouterr()
    assert len(out.split()) == 3  # only the last stage writes to the terminal
    assert "6 prompt + 3 generated tokens" in err  # 1 given + 5 piped
    assert sh("ps | run --ids 1 --max-tokens 2") == 1  # text into ids needs a tokenizer
    assert "no tokenizer" in capsys.readouterr().err


def test_redirections_write_and_append(tmp_path, capsys):
    out_file, dev_file = tmp_path / "out.txt", tmp_path / "dev.txt"
    assert sh(f"run --ids 1,2 --max-tokens 5 > {out_file}; ps >> {out_file}; lsdev > {dev_file}; lsdev >> {dev_file}") == 0
    assert capsys.readouterr().out == ""
    first, header = out_file.read_text().splitlines()[:2]
    assert len(first.split()) == 5 and header.split()[:2] == ["PID", "PPID"]
    assert dev_file.read_text().count("sim0") == 2
    assert sh(f"ps > {tmp_path}/no/such/dir/f") == 1
    assert "No such file or directory (ENOENT)" in capsys.readouterr().err


def test_top_one_frame(capsys):
    assert sh("run --ids 1 --max-tokens 60000 &; top -n 1") == 0
    out = capsys.readouterr().out
    assert "TOK/S" in out and "RUNNING" in out and "1 running" in out
    assert re.search(r"^sim0\s+sim, emulated\s+sim\s+\d+%", out, re.M), out  # device utilization


def test_models_without_a_model_manager(monkeypatch, capsys):
    monkeypatch.delenv("LLMOS_HOME", raising=False)  # with it the kernel starts the model manager
    assert sh("models") == 0
    out, err = capsys.readouterr()
    assert re.search(r"^sim\s+sim0\s+sim\s+emulated", out, re.M), out
    assert "llmsh: models: load/unload: the model manager is not running" in err
    assert sh("load tiny; unload tiny --device sim0") == 1
    err = capsys.readouterr().err
    assert "llmsh: load: the model manager is not running" in err and "(ENOSYS)" in err
    assert "llmsh: unload: the model manager is not running" in err
    assert sh("load") == 2


async def test_models_shows_the_model_managers_store():
    class Kernel:  # answers like a kernel with the model manager running
        async def lsdev(self):
            return [{"model": "default", "name": "cpu0", "kind": "cpu", "emulated": False}]

        async def call(self, op, **args):
            assert op == "model_list"
            return {"models": [{"name": "tiny", "versions": ["v1", "v2"], "newest": "v2", "loaded": ["v2"]}]}

    out = io.StringIO()
    shell = SimpleNamespace(llm=Kernel(), say=lambda text: out.write(text + "\n"), error=pytest.fail)
    await cmd_models(shell, [])
    assert re.search(r"^tiny\s+v1,v2\s+v2\s+v2$", out.getvalue(), re.M), out.getvalue()


def test_help_lists_every_command(capsys):
    assert sh("help; help kill") == 0
    out = capsys.readouterr().out
    for name in ("run", "jobs", "fg", "bg", "kill", "wait", "nice", "fork", "ps", "top", "free", "lsdev",
                 "models", "load", "unload", "uname", "history", "help", "exit"):
        assert re.search(rf"^  {name}\b", out, re.M), name


def test_history_from_stdin_follows_the_history_file(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmsh_history").write_text("\n# 2025-01-01 00:00:00\n+uname\n")  # prompt_toolkit's format
    monkeypatch.setenv("LLMOS_HOME", str(home))
    monkeypatch.setattr("sys.stdin", io.StringIO("ps\n\nkill 999\nhistory\nhistory 1\n"))
    assert main(SIM) == 0
    out = capsys.readouterr().out
    assert re.search(r"1\s+uname\n\s+2\s+ps\n\s+3\s+kill 999\n\s+4\s+history\n\s+5\s+history 1\n$", out), out


def test_stdin_ends_with_the_last_status(monkeypatch, capsys):
    monkeypatch.setenv("LLMOS_HOME", "/nonexistent/llmos-home")
    monkeypatch.setattr("sys.stdin", io.StringIO("ps\nnosuchcommand\n"))
    assert main(SIM) == 127


def test_run_prompt_streams_text_and_pipes_it_into_the_next_prompt(tmp_path, capsys):
    model = tmp_path / "tiny"
    write_tokenizer(model, vocab_size=300)
    write_checkpoint(model, vocab_size=300)
    line = ("run --max-tokens 6 --temperature 0 'def main():'; free; "
            "run --max-tokens 4 --temperature 0 'def main():' | run -v --max-tokens 2 --temperature 0 'import'")
    assert main(["--model", str(model), "-c", line]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "cpu0" in out
    prompt_tokens = int(re.search(r"(\d+) prompt \+ 2 generated", err).group(1))
    assert prompt_tokens > 2  # "import", a newline and the first run's four tokens as text


def test_caps_and_revoke_with_a_security_service(tmp_path, capsys, monkeypatch):
    from llmos.services import securefiles

    monkeypatch.setattr(securefiles, "SYNC", False)
    home = ["--home", str(tmp_path / "home")]
    status = main([*SIM, *home, "-c", "run --ids 1,2,3 --max-tokens 60000 &; caps %1; nice %1 10; nice %1 0; ps"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert re.search(r"^KIND\s+HANDLE", out, re.M) and re.search(r"^priority\s+cap1\.", out, re.M), out
    assert main([*SIM, *home, "-c", "revoke cap1.bogus.handle"]) == 1
    assert "llmsh: revoke: no process holds that capability" in capsys.readouterr().err


def test_caps_without_a_security_service_says_how_to_get_one(capsys):
    assert sh("run --ids 1,2,3 --max-tokens 60000 &; caps %1") == 0
    assert "boot with --home" in capsys.readouterr().out
    assert sh("revoke x") == 1
    assert "(ENOSYS)" in capsys.readouterr().err
