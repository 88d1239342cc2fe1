"""The README's results table is generated from committed records and cannot drift from them."""

from pathlib import Path

import pytest

from bench.analysis.readme import (
    END,
    START,
    current_block,
    replace_block,
    results_block,
)
from bench.cli import main
from bench.errors import BenchError
from bench.records import load_records

REPO = Path(__file__).resolve().parents[1]


def test_readme_table_matches_the_committed_records(capsys):
    assert main(["readme", "--check"]) == 0, capsys.readouterr().out


def test_block_names_its_source_and_says_it_is_not_table_1():
    records = load_records(REPO / "reports" / "brief" / "records")
    block = results_block([(records, "reports/brief.md")])
    assert block.startswith(START) and block.endswith(END)
    assert "**Not comparable to Table 1**: 64x64 centre crops, 500 iterations" in block
    assert "[reports/brief.md](reports/brief.md)" in block and "commit " in block
    assert block.count("\n| ") == 13  # header, 11 images, the mean row (after the separator line)


def test_the_paper_protocol_table_comes_first_and_names_each_cells_machine():
    paper = load_records(REPO / "reports" / "paper" / "records")
    brief = load_records(REPO / "reports" / "brief" / "records")
    block = results_block([(paper, "reports/paper.md"), (brief, "reports/brief.md")])
    ours, theirs = block.index("[reports/paper.md]"), block.index("[reports/brief.md]")
    assert block.index("**At the paper's protocol**") < ours < block.index("**Not comparable to Table 1**") < theirs
    assert f"{len({r.image for r in paper})} of Table 1's 11 images so far" in block
    provenance = next(line for line in block.splitlines() if line.startswith("Profile `paper`"))
    for r in paper:  # every cell is named beside the machine and precision it ran with
        assert f"{r.config.recipe.precision} on {r.provenance.device_name}:" in provenance and r.label in provenance


def test_an_empty_list_of_runs_is_refused():
    with pytest.raises(BenchError, match="no records to build the README's results table from"):
        results_block([])


def test_replace_block_keeps_the_rest_and_refuses_a_readme_without_markers():
    text = f"# title\n\n{START}\nold\n{END}\n\nrest\n"
    assert replace_block(text, f"{START}\nnew\n{END}") == f"# title\n\n{START}\nnew\n{END}\n\nrest\n"
    with pytest.raises(BenchError, match="no results markers"):
        replace_block("# no markers\n", f"{START}\n{END}")


def test_a_stale_table_is_reported(tmp_path, monkeypatch, capsys):
    import bench.commands.results as results

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nstale\n{END}\n")
    monkeypatch.setattr(results, "README", readme)
    assert main(["readme", "--check"]) == 1
    assert "differs" in capsys.readouterr().out
    assert main(["readme"]) == 0
    assert current_block(readme) == current_block(REPO / "README.md")
