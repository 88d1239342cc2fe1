"""The docs cannot drift mechanically from the code: every `python -m bench` flag, subcommand and choice,
`make` target, `DIP_*` environment variable and profile that README.md and docs/*.md name exists, and
docs/protocol.md's generated defaults tables are what the code renders. Each finding is one line,
file:line and the token. No torch, no training: well under a second."""

from __future__ import annotations

import argparse
import re
from functools import cache
from pathlib import Path

import pytest

from bench.analysis.docs_tables import END, START, current_block, defaults_block, replace_block
from bench.cli import build_parser, main
from bench.methods import REGISTERED
from bench.config import PROFILES
from bench.errors import BenchError

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Commands whose flags are theirs, not ours: a code piece starting with one of these is skipped.
FOREIGN_TOOLS = {
    "pip", "pip3", "pytest", "git", "sbatch", "srun", "squeue", "scancel", "scontrol", "sacct", "salloc",
    "nvidia-smi", "torchrun", "apt", "apt-get", "conda", "uv", "curl", "wget", "docker", "ssh", "rsync",
    "tar", "ls", "rm", "cp", "mv", "ln", "cd", "export", "env", "sh", "bash",
}
# Flags of other tools that the docs name in prose or in a code span of their own, where the context
# does not say whose they are. Each entry says why it is not ours.
FOREIGN_FLAGS = {
    "--durations": "pytest's option, set in pyproject.toml's addopts (docs/regression.md)",
    "--benchmark-json": "pytest-benchmark's output option, which `make speed` passes to pytest",
    "--benchmark-only": "pytest-benchmark's option, which `make speed` passes to pytest",
    "--partition": "sbatch's option, which `--slurm-partition` sets (docs/clusters.md)",
    "--time": "sbatch's option, which `--slurm-time` sets (docs/clusters.md)",
}

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?P<prefix>-(?:\*|\.\.\.))?")
SEPARATOR = re.compile(r"\s*(?:&&|\|\||;|\||(?:^|\s)#\s)\s*")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


# --- the code's side ------------------------------------------------------------------------------

@cache
def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@cache
def options(command: str | None = None) -> dict[str, argparse.Action]:
    """Option string -> action, of one subcommand or (None) of all of them; run's include the fields of every
    registered method (each a flag of `run --method NAME`)."""
    commands = subcommands() if command is None else {command: subcommands()[command]}
    found = {o: a for sub in commands.values() for a in sub._actions for o in a.option_strings}
    if command in (None, "run"):
        for method in REGISTERED:
            (action,) = [a for a in build_parser(method)._actions if isinstance(a, argparse._SubParsersAction)]
            found |= {o: a for a in action.choices["run"]._actions for o in a.option_strings if o not in found}
    return found


@cache
def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    targets = {t for line in re.findall(r"^([A-Za-z0-9_.-][A-Za-z0-9_. -]*):(?!=)", text, re.M) for t in line.split()}
    return targets - {".PHONY"}


@cache
def code_sources() -> str:
    return "\n".join(p.read_text() for package in ("bench", "dip") for p in sorted((REPO / package).rglob("*.py")))


# --- the docs' side -------------------------------------------------------------------------------

def code_segments(text: str) -> tuple[list[tuple[int, str]], str]:
    """The code of a markdown page as (offset, text) pieces: each logical line of a fenced block (a
    trailing backslash continues it) and each inline code span; and the prose, with code blanked out
    (same offsets)."""
    segments: list[tuple[int, str]] = []
    prose = list(text)
    fenced, offset, pending = False, 0, None
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            start = offset if pending is None else pending
            if line.rstrip().endswith("\\"):
                pending = start
            else:
                segments.append((start, text[start:offset + len(line)]))
                pending = None
        if fenced or line.lstrip().startswith("```"):
            prose[offset:offset + len(line)] = " " * len(line)
        offset += len(line)
    masked = "".join(prose)
    for span in re.finditer(r"`([^`]+)`", masked):
        segments.append((span.start(1), span.group(1)))
        prose[span.start():span.end()] = " " * (span.end() - span.start())
    return sorted(segments), "".join(prose)


def pieces(offset: int, code: str):
    """The commands of one code segment, split at ;, &&, ||, | and a # comment: (offset, text)."""
    start = 0
    for sep in SEPARATOR.finditer(code):
        yield offset + start, code[start:sep.start()]
        start = sep.end()
    yield offset + start, code[start:]


def whose(piece: str) -> tuple[str, str | None, int]:
    """Who a command piece belongs to: ("bench", subcommand or None, where its arguments start),
    ("make", None, where its targets start), ("foreign", tool, 0) or ("any", None, 0)."""
    words = [(m.group(), m.start()) for m in re.finditer(r"[^\s\\]+", piece)]
    while words and (words[0][0] in ("$", "sudo", "time") or ENV_ASSIGNMENT.match(words[0][0])):
        words.pop(0)
    if not words:
        return "any", None, 0
    tool = words[0][0].rsplit("/", 1)[-1]
    if tool.startswith("python"):
        if len(words) > 2 and words[1][0] == "-m":
            if words[2][0] != "bench":
                return "foreign", words[2][0], 0
            rest = words[3:]
            sub = rest[0][0] if rest and not rest[0][0].startswith("-") else None
            end = rest[0][1] + len(rest[0][0]) if sub else words[2][1] + len("bench")
            return "bench", sub, end
        return "foreign", tool, 0
    if tool in FOREIGN_TOOLS:
        return "foreign", tool, 0
    if tool == "make":
        return "make", None, words[0][1] + len(words[0][0])
    if tool in subcommands() and any(FLAG.match(w) for w, _ in words[1:]):
        return "bench", tool, words[0][1] + len(tool)
    return "any", None, 0


def code_pieces(text: str):
    """Every command piece of a page's code: (offset, piece, *whose(piece))."""
    for offset, code in code_segments(text)[0]:
        for at, piece in pieces(offset, code):
            yield (at, piece, *whose(piece))


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def flag_findings(name: str, text: str) -> list[str]:
    """Flags, subcommands and choice values of `python -m bench` that the parser does not have."""
    found = []

    def check_flag(token: str, is_prefix: bool, command: str | None, at: int) -> argparse.Action | None:
        known = options(command)
        where = f"`python -m bench {command}`" if command else "any subcommand of `python -m bench`"
        if is_prefix:
            stem = token[: token.rindex("-") + 1]
            if not any(o.startswith(stem) for o in known):
                found.append(f"{name}:{line_of(text, at)}: no flag of {where} starts with {stem!r}")
            return None
        if token in known:
            return known[token]
        if command is None and token in FOREIGN_FLAGS:
            return None
        found.append(f"{name}:{line_of(text, at)}: {token} is not a flag of {where}")
        return None

    for at, piece, kind, command, args_start in code_pieces(text):
        if kind in ("foreign", "make"):
            continue
        if kind == "bench" and command is not None and command not in subcommands():
            found.append(f"{name}:{line_of(text, at)}: python -m bench {command}: no such subcommand")
            continue
        for flag in FLAG.finditer(piece, args_start):
            action = check_flag(flag.group(), bool(flag.group("prefix")), command, at + flag.start())
            value = re.match(r"[ =]([a-z0-9][\w.-]*)(?=\s|$)", piece[flag.end():])
            if action is not None and action.choices is not None and value and value.group(1) not in action.choices:
                found.append(f"{name}:{line_of(text, at + flag.end())}: {flag.group()} {value.group(1)}: "
                             f"not one of its choices ({', '.join(map(str, action.choices))})")
    for flag in FLAG.finditer(code_segments(text)[1]):
        check_flag(flag.group(), bool(flag.group("prefix")), None, flag.start())
    return found


def make_findings(name: str, text: str) -> list[str]:
    """Targets of `make` commands (in code) that the Makefile does not have."""
    found = []
    for at, piece, kind, _, args_start in code_pieces(text):
        if kind == "make":
            for word in re.finditer(r"[^\s\\]+", piece[args_start:]):
                target = word.group()
                if not target.startswith("-") and "=" not in target and target not in make_targets():
                    found.append(f"{name}:{line_of(text, at + args_start + word.start())}: make {target}: "
                                 "no such target in the Makefile")
    return found


def env_findings(name: str, text: str) -> list[str]:
    """DIP_* environment variables that no module of bench/ or dip/ reads (names it as a string)."""
    return [f"{name}:{line_of(text, m.start())}: {m.group()} is not read anywhere in bench/ or dip/"
            for m in re.finditer(r"\bDIP_[A-Z0-9_]+\b", text)
            if not re.search(rf"""["']{m.group()}["']""", code_sources())]


PROFILE_NAMES = re.compile(r"((?:`[a-z][\w-]*`(?:,? (?:and|or) |, ))*`[a-z][\w-]*`) profiles?\b"
                           r"|--profile[ =]([a-z][\w-]*)")


def profile_findings(name: str, text: str) -> list[str]:
    """Profiles named as "the `X` profile" (or "`X` and `Y` profiles") or "--profile X" that do not exist."""
    found = []
    for m in PROFILE_NAMES.finditer(text):
        names = re.findall(r"`([^`]+)`", m.group(1)) if m.group(1) else [m.group(2)]
        found += [f"{name}:{line_of(text, m.start())}: profile `{n}` is not in bench.config.PROFILES"
                  for n in names if n not in PROFILES]
    return found


def findings(check) -> list[str]:
    return [f for page in DOCS for f in check(page.relative_to(REPO).as_posix(), page.read_text())]


def fail_on(found: list[str]) -> None:
    if found:
        pytest.fail("\n".join(found), pytrace=False)


# --- the checks -----------------------------------------------------------------------------------

def test_every_flag_subcommand_and_choice_named_in_the_docs_exists():
    fail_on(findings(flag_findings))


def test_every_make_target_named_in_the_docs_exists():
    fail_on(findings(make_findings))


def test_every_dip_environment_variable_named_in_the_docs_is_read():
    fail_on(findings(env_findings))


def test_every_profile_named_in_the_docs_exists():
    fail_on(findings(profile_findings))


def test_protocol_defaults_tables_match_the_code():
    path = REPO / "docs" / "protocol.md"
    text = path.read_text()
    if current_block(path) != defaults_block():
        pytest.fail(f"docs/protocol.md:{line_of(text, text.find(START))}: the defaults tables differ from the code; "
                    "run `python -m bench docs`", pytrace=False)


# --- the checker itself ---------------------------------------------------------------------------

def test_the_checker_finds_drift_and_leaves_other_tools_alone():
    page = "\n".join([
        "Run `python -m bench run --profile quick --cells-per-gpu 4` or `--no-backtracking`.",  # fine
        "`python -m bench run --celsl-per-gpu 4`",                                              # 2: typo
        "`python -m bench speed --cells-per-gpu 2`",                                            # 3: run's, not speed's
        "`--executor slrum`, `--mask paper`",                                                   # 4: bad choice
        "`python -m bench train`",                                                              # 5: no such subcommand
        "```sh",
        "pip install --quiet -e .  # `pip`'s flags are pip's",
        ".venv/bin/python -m pytest --benchmark-only -x && make check",
        ".venv/bin/python -m bench run --profile paper \\",
        "    --slurm-partition gpu --no-such-flag",                                             # 10
        "make bench-quick setup TORCH=torch nosuchtarget",                                      # 11
        "```",
        "The flags `--kernel-*` and `--no-...`; `--nope-*` matches none.",                      # 13
        "`make nosuch`, the `quick` and `nosuch` profiles, `--profile bogus`, $DIP_NOPE, DIP_DATA_DIR",  # 14
    ])
    assert flag_findings("p.md", page) == [
        "p.md:2: --celsl-per-gpu is not a flag of `python -m bench run`",
        "p.md:3: --cells-per-gpu is not a flag of `python -m bench speed`",
        "p.md:4: --executor slrum: not one of its choices (inline, local, slurm)",
        "p.md:5: python -m bench train: no such subcommand",
        "p.md:10: --no-such-flag is not a flag of `python -m bench run`",
        "p.md:13: no flag of any subcommand of `python -m bench` starts with '--nope-'",
        "p.md:14: --profile bogus: not one of its choices (paper, brief, quick, smoke, fingerprint)",
    ]
    assert make_findings("p.md", page) == ["p.md:11: make nosuchtarget: no such target in the Makefile",
                                           "p.md:14: make nosuch: no such target in the Makefile"]
    assert profile_findings("p.md", page) == ["p.md:14: profile `nosuch` is not in bench.config.PROFILES",
                                              "p.md:14: profile `bogus` is not in bench.config.PROFILES"]
    assert env_findings("p.md", page) == ["p.md:14: DIP_NOPE is not read anywhere in bench/ or dip/"]


def test_docs_command_checks_and_rewrites_the_block(tmp_path, monkeypatch, capsys):
    import bench.commands.docs as docs

    page = tmp_path / "protocol.md"
    page.write_text(f"intro\n\n{START}\nstale\n{END}\n\nrest\n")
    monkeypatch.setattr(docs, "PROTOCOL", page)
    assert main(["docs", "--check"]) == 1 and "differ" in capsys.readouterr().out
    assert main(["docs"]) == 0
    assert page.read_text() == f"intro\n\n{defaults_block()}\n\nrest\n"
    assert main(["docs", "--check"]) == 0
    with pytest.raises(BenchError, match="no defaults markers"):
        replace_block("# no markers\n", defaults_block())


def test_the_block_shows_every_profile_and_field():
    block = defaults_block()
    assert block.startswith(START) and block.endswith(END)
    for profile in PROFILES:
        assert f"| `{profile}` |" in block
    assert "| `lr` | `--lr` | 0.001 | 0.01 |" in block
    assert "| `input_noise_std` | `--input-noise-std` | 0.03 | 1/30 |" in block
    assert "| `backtracking` | `--backtracking` / `--no-backtracking` | on | off |" in block
    assert "| `fingerprint` | house, cman, peppers | 0 | 64x64 | 24 | 0 | reference | lr 1e-06, eval_every 1 |" in block
