"""`python -m bench docs`: the generated defaults block of docs/protocol.md (no training, no torch)."""

from __future__ import annotations

import argparse

from bench.data import REPO_ROOT
from bench.paths import PROTOCOL
from bench.records import write_text_atomic


def cmd_docs(args: argparse.Namespace) -> int:
    from bench.analysis.docs_tables import current_block, defaults_block, replace_block

    name = PROTOCOL.relative_to(REPO_ROOT).as_posix() if PROTOCOL.is_relative_to(REPO_ROOT) else str(PROTOCOL)
    block = defaults_block()
    if args.check:
        if current_block(PROTOCOL) != block:
            print(f"{name}'s defaults tables differ from the code; run `python -m bench docs`")
            return 1
        print(f"{name}'s defaults tables match the code")
        return 0
    write_text_atomic(PROTOCOL, replace_block(PROTOCOL.read_text(), block, name))
    print(f"{name}'s defaults tables written from the code")
    return 0
