"""llmsh's grammar: words, quotes, ``;``, ``&``, pipes ``|`` and redirections ``>`` ``>>``.

    line      := pipeline ((';' | '&') pipeline)* [';' | '&']
    pipeline  := command ('|' command)* [('>' | '>>') PATH]
    command   := WORD+

Quoting follows sh: '...' is literal, "..." keeps \\" \\\\ \\$ \\` escapes, a backslash outside
quotes escapes the next character, and ``#`` at the start of a word begins a comment. An
operator inside quotes is a plain word, so ``run "a; b"`` runs one command.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from typing import Any

OPERATORS = (">>", ";", "|", "&", ">")  # longest first: ">>" before ">"
SEPARATORS = (";", "&")
REDIRECTIONS = (">", ">>")


class ShellError(Exception):
    """A command failed in a way the shell reports itself (status 1): ``llmsh: CMD: message``."""

    status = 1


class UsageError(ShellError):
    """Bad arguments or syntax (status 2, like a shell builtin's usage error)."""

    status = 2


class ShellExit(Exception):
    """``exit [STATUS]``: leave the shell with this status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class Token:
    """One lexical unit: a word (quotes removed) or an unquoted operator."""

    text: str
    operator: bool = False


@dataclass
class Pipeline:
    """Commands joined by ``|``, with an optional redirection of the last one's output."""

    commands: list[list[str]] = field(default_factory=lambda: [[]])  # words of each stage
    redirect: tuple[str, str] | None = None  # (">" or ">>", path)
    background: bool = False  # ended by "&"

    @property
    def text(self) -> str:
        """The pipeline as a user would type it again (for ``jobs`` and notices)."""
        text = " | ".join(shlex.join(words) for words in self.commands)
        if self.redirect:
            text += f" {self.redirect[0]} {shlex.quote(self.redirect[1])}"
        return text + (" &" if self.background else "")


def lex(line: str) -> list[Token]:
    """Split a line into words and operators; UsageError for an unterminated quote."""
    tokens: list[Token] = []
    word: list[str] | None = None  # None: between words; [] starts a word (even an empty "")
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace() or (c == "#" and word is None):
            if word is not None:
                tokens.append(Token("".join(word)))
                word = None
            if c == "#":
                break
            i += 1
            continue
        op = next((o for o in OPERATORS if line.startswith(o, i)), None)
        if op is not None:
            if word is not None:
                tokens.append(Token("".join(word)))
                word = None
            tokens.append(Token(op, operator=True))
            i += len(op)
            continue
        word = [] if word is None else word
        if c == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise UsageError("syntax error: unterminated quote (')")
            word.append(line[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n and line[i + 1] in '"\\$`':
                    i += 1
                word.append(line[i])
                i += 1
            if i >= n:
                raise UsageError('syntax error: unterminated quote (")')
            i += 1
        elif c == "\\":
            word.append(line[i + 1:i + 2])
            i += 2
        else:
            word.append(c)
            i += 1
    if word is not None:
        tokens.append(Token("".join(word)))
    return tokens


def _unexpected(token: str) -> UsageError:
    return UsageError(f"syntax error near unexpected token '{token}'")


def parse_line(line: str) -> list[Pipeline]:
    """The pipelines of one line, in order; UsageError says where the syntax is wrong."""
    pipelines: list[Pipeline] = []
    current = Pipeline()
    expecting_path: str | None = None  # the redirection operator whose file name comes next
    for token in lex(line):
        if expecting_path is not None:
            if token.operator:
                raise _unexpected(token.text)
            current.redirect = (expecting_path, token.text)
            expecting_path = None
        elif not token.operator:  # words may follow a redirection too, as in sh: "run > f x"
            current.commands[-1].append(token.text)
        elif token.text == "|":
            if not current.commands[-1] or current.redirect is not None:
                raise _unexpected("|")
            current.commands.append([])
        elif token.text in REDIRECTIONS:
            if current.redirect is not None or not current.commands[-1]:
                raise _unexpected(token.text)
            expecting_path = token.text
        else:  # ";" or "&" ends a pipeline
            if not current.commands[-1]:
                if len(current.commands) > 1 or token.text == "&":
                    raise _unexpected(token.text)
                continue  # an empty command between separators, as in ";;"
            current.background = token.text == "&"
            pipelines.append(current)
            current = Pipeline()
    if expecting_path is not None:
        raise _unexpected("newline")
    if current.commands[-1]:
        pipelines.append(current)
    elif len(current.commands) > 1:
        raise _unexpected("newline")
    return pipelines


def split_commands(line: str) -> list[list[str]]:
    """Words of each ``;``-separated command (operators kept as words); comments dropped."""
    commands = []
    for pipeline in parse_line(line):
        words = [w for stage in pipeline.commands for w in [*stage, "|"]][:-1]
        if pipeline.redirect:
            words += list(pipeline.redirect)
        commands.append(words + (["&"] if pipeline.background else []))
    return commands


# -- run's options ---------------------------------------------------------------------------

RUN_USAGE = ("usage: run [-v] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] "
             "[--nice N] [--model M] [--device D] [--ignore-eos] [--ids 1,2,3 | PROMPT]")


@dataclass
class RunRequest:
    """What ``run`` was asked for: the spawn options and how to report."""

    options: dict[str, Any]  # spawn's keyword arguments; exactly one of prompt, prompt_ids (unless piped)
    verbose: bool  # print a summary line (tokens, rate, TTFT) on stderr at the end


def parse_run_args(args: list[str], piped: bool = False) -> RunRequest:
    """spawn options from ``run``'s arguments; with ``piped`` the prompt may come from the pipe."""
    parser = argparse.ArgumentParser(prog="run", add_help=False, exit_on_error=False)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--ids", default=None)
    parser.add_argument("prompt", nargs="*")
    try:
        ns, unknown = parser.parse_known_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise UsageError(f"{exc}; {RUN_USAGE}") from None
    flags = [word for word in unknown if word.startswith("-")]
    if flags:
        raise UsageError(f"unknown option {flags[0]}; {RUN_USAGE}")
    prompt_words = ns.prompt + unknown
    options: dict[str, Any] = {
        "max_tokens": ns.max_tokens, "temperature": ns.temperature, "seed": ns.seed, "nice": ns.nice,
        "top_k": ns.top_k, "top_p": ns.top_p, "model": ns.model, "device": ns.device,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if ns.ignore_eos:
        options["ignore_eos"] = True
    if ns.ids is not None and prompt_words:
        raise UsageError("give a PROMPT or --ids, not both")
    if ns.ids is None and not prompt_words and not piped:
        raise UsageError(f"give a PROMPT or --ids; {RUN_USAGE}")
    if ns.ids is not None:
        try:
            options["prompt_ids"] = [int(x) for x in ns.ids.split(",") if x]
        except ValueError:
            raise UsageError(f"--ids {ns.ids!r}: expected comma-separated integers") from None
    elif prompt_words:
        options["prompt"] = " ".join(prompt_words)
    return RunRequest(options, ns.verbose)
