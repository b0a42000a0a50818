"""llmsh on a pseudo-terminal, driven as a person would with pexpect.

A real ``llmos boot --device sim`` kernel serves a socket (the sim device produces a token
every few milliseconds of modeled time, so a job with 60000 tokens runs long enough to press
keys); ``llmsh --socket`` attaches to it on a pty, where Ctrl-C and Ctrl-Z are real terminal
signals and the prompt is prompt_toolkit's.

prompt_toolkit redraws the typed line (prompt included) when it is accepted, so the prompt's
text alone cannot tell a new prompt from a redraw. It turns bracketed paste on at each prompt
and off when the line is accepted; the helpers wait for those two sequences instead.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

LLMOS = [sys.executable, "-m", "llmos.userland.cli"]
LLMSH = [sys.executable, "-m", "llmos.userland.llmsh"]
PROMPT_BEGIN = "\x1b[?2004h"  # bracketed paste on: a new prompt is being drawn
PROMPT_END = "\x1b[?2004l"  # bracketed paste off: the line was accepted (or Ctrl-C/Ctrl-D)
TIMEOUT_S = 15
LONG_RUN = "run --ids 1,2,3 --max-tokens 60000"
TOKENS = re.compile(r"(\d+ ){8}")  # a few token ids streamed


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory) -> Iterator[str]:
    """``llmos boot --device sim`` on a socket for this module's shells."""
    path = tmp_path_factory.mktemp("pty") / "k.sock"
    kernel = subprocess.Popen([*LLMOS, "boot", "--device", "sim", "--socket", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _accepts(path):
            assert kernel.poll() is None, f"llmos boot exited: {kernel.communicate()[1]}"
            assert time.monotonic() < deadline, "llmos boot did not come up"
            time.sleep(0.02)
        yield str(path)
    finally:
        kernel.send_signal(signal.SIGTERM)
        try:
            kernel.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            kernel.kill()
            kernel.communicate()


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture
def home(tmp_path) -> Path:
    """LLMOS_HOME for the shells of one test (their history file lives there)."""
    return tmp_path / "home"


def spawn_llmsh(socket_path: str, home: Path) -> pexpect.spawn:
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "LLMOS_HOME": str(home)}
    sh = pexpect.spawn(LLMSH[0], [*LLMSH[1:], "--socket", socket_path], env=env, encoding="utf-8",
                       timeout=TIMEOUT_S, dimensions=(40, 160))
    wait_for_prompt(sh)
    return sh


def wait_for_prompt(sh: pexpect.spawn) -> str:
    """Wait for the next prompt; returns what was printed before it."""
    sh.expect_exact(PROMPT_BEGIN)
    before = sh.before
    sh.expect(r"llmsh\$")
    return before


def type_line(sh: pexpect.spawn, line: str) -> None:
    """Type a line and Enter; returns once the shell has taken it."""
    sh.sendline(line)
    sh.expect_exact(PROMPT_END)


def command(sh: pexpect.spawn, line: str) -> str:
    """Type a line and return its output, up to the next prompt."""
    type_line(sh, line)
    return wait_for_prompt(sh)


def leave(sh: pexpect.spawn, line: str = "exit") -> int:
    type_line(sh, line)
    sh.expect(pexpect.EOF)
    sh.close()
    return sh.exitstatus


def job_tokens(jobs_output: str, number: int = 1) -> int:
    """Tokens so far of job ``number`` in ``jobs`` output."""
    match = re.search(rf"\[{number}\]. \S+\s+\d+\s+(\d+)/60000 tokens", jobs_output)
    assert match, jobs_output
    return int(match.group(1))


def test_ctrl_c_ends_the_foreground_job_and_the_shell_lives_on(socket_path, home):
    sh = spawn_llmsh(socket_path, home)
    type_line(sh, LONG_RUN)
    sh.expect(TOKENS)
    sh.sendintr()  # the terminal's Ctrl-C: SIGINT to the shell, SIGTERM to the process
    wait_for_prompt(sh)
    table = command(sh, "ps")
    assert "PID" in table and "RUNNING" not in table, table  # ended and reaped
    type_line(sh, LONG_RUN)
    sh.expect(TOKENS)
    sh.send("\x03")
    wait_for_prompt(sh)
    assert leave(sh) == 130  # exit: the last status, Ctrl-C's


def test_ctrl_z_stops_a_job_and_fg_streams_the_rest(socket_path, home):
    sh = spawn_llmsh(socket_path, home)
    type_line(sh, LONG_RUN)
    sh.expect(TOKENS)
    sh.send("\x1a")  # Ctrl-Z: SIGTSTP to the shell, SIGSTOP to the process
    sh.expect(r"\[1\]\+ Stopped\s+run --ids 1,2,3 --max-tokens 60000")
    wait_for_prompt(sh)
    jobs = command(sh, "jobs")
    assert "Stopped" in jobs
    stopped_at = job_tokens(jobs)
    time.sleep(0.3)
    assert job_tokens(command(sh, "jobs")) == stopped_at  # stopped means no tokens

    type_line(sh, "fg")
    sh.expect_exact("run --ids 1,2,3 --max-tokens 60000")  # fg names the job it continues
    sh.expect(TOKENS)
    time.sleep(0.5)  # the first tokens fg shows may be ones made before the stop: let new ones come
    sh.send("\x1a")
    sh.expect(r"\[1\]\+ Stopped")
    wait_for_prompt(sh)
    assert job_tokens(command(sh, "jobs")) > stopped_at  # fg let it run on

    type_line(sh, "fg %1")
    sh.expect(TOKENS)
    sh.sendintr()
    wait_for_prompt(sh)
    assert "Stopped" not in command(sh, "jobs")
    assert leave(sh) == 0


def test_background_jobs_bg_kill_and_wait(socket_path, home):
    sh = spawn_llmsh(socket_path, home)
    started = command(sh, f"{LONG_RUN} &")
    assert re.search(r"\[1\] \d+", started), started
    assert "Running" in command(sh, "jobs")
    command(sh, "kill -STOP %1")
    assert "Stopped" in command(sh, "jobs")
    assert "run --ids 1,2,3 --max-tokens 60000 &" in command(sh, "bg")
    assert "Running" in command(sh, "jobs")
    type_line(sh, "wait")  # blocks: the job has 60000 tokens to go
    time.sleep(0.3)
    sh.sendintr()  # Ctrl-C ends the wait, not the job
    wait_for_prompt(sh)
    assert "Running" in command(sh, "jobs")
    command(sh, "kill %1")
    assert "killed by SIGTERM" in command(sh, "wait")
    assert "llmsh: kill: %1: no such job" in command(sh, "kill %1")
    assert leave(sh) == 1


def test_history_persists_and_tab_completes_commands(socket_path, home):
    sh = spawn_llmsh(socket_path, home)
    sh.send("lsd\t")  # Tab completes the command name
    # The completion shows as "ev", drawn with "lsd" or after it (escape codes between them,
    # depending on whether the Tab arrived in the same read): expect only what Tab added.
    sh.expect_exact("ev")
    sh.sendline("")
    sh.expect_exact(PROMPT_END)
    assert "sim0" in wait_for_prompt(sh)
    assert "llmsh: nosuch: command not found" in command(sh, "nosuch")
    assert leave(sh) == 127
    assert "+lsdev" in (home / "llmsh_history").read_text()

    sh = spawn_llmsh(socket_path, home)
    listed = command(sh, "history")
    assert re.search(r"1\s+lsdev", listed) and re.search(r"2\s+nosuch", listed), listed
    assert leave(sh, "exit 3") == 3


def test_top_refreshes_in_place_until_q(socket_path, home):
    sh = spawn_llmsh(socket_path, home)
    command(sh, f"{LONG_RUN} &")
    type_line(sh, "top -d 0.2")
    sh.expect("RUNNING")
    sh.expect("TOK/S")  # a second frame
    sh.send("q")
    wait_for_prompt(sh)
    type_line(sh, "top")
    sh.expect("RUNNING")
    sh.sendintr()  # Ctrl-C leaves top too
    wait_for_prompt(sh)
    assert leave(sh) == 0
