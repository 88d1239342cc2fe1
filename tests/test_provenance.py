"""Where a record's commit comes from."""

from bench import provenance
from bench.cli import main


def test_a_copy_without_git_names_its_commit_through_dip_commit(monkeypatch):
    monkeypatch.setattr(provenance, "_git", lambda *args: None)  # no .git, or no git at all
    monkeypatch.setenv("DIP_COMMIT", "1ebb1cd96c5c")
    assert provenance.git_state() == {"commit": "1ebb1cd96c5c", "dirty": None}
    monkeypatch.delenv("DIP_COMMIT")
    assert provenance.git_state() == {"commit": None, "dirty": None}


def test_a_checkout_names_its_own_commit_whatever_dip_commit_says(monkeypatch):
    answers = {("rev-parse", "HEAD"): "abc123", ("status", "--porcelain", "--untracked-files=no"): ""}
    monkeypatch.setattr(provenance, "_git", lambda *args: answers[args])
    monkeypatch.setenv("DIP_COMMIT", "something-else")
    assert provenance.git_state() == {"commit": "abc123", "dirty": False}


def test_a_checkout_whose_git_cannot_be_read_is_refused_before_training(monkeypatch, tmp_path, capsys):
    """A git worktree whose main checkout was re-created: its .git file points nowhere. Records made
    there would name no commit, so `bench run` refuses in one line before it trains; with DIP_COMMIT
    set, or without any .git (a copied tree), it goes on."""
    monkeypatch.delenv("DIP_COMMIT", raising=False)
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    assert provenance.checkout_problem() is None  # no .git at all
    (tmp_path / ".git").write_text(f"gitdir: {tmp_path / 'gone' / '.git' / 'worktrees' / 'wt'}\n")
    problem = provenance.checkout_problem()
    assert problem.startswith(f"{tmp_path} has a .git, but git cannot name its commit (fatal: not a git repository")
    assert problem.endswith("every record would name no commit; repair the checkout (a worktree whose main checkout "
                            "moved: use a clone, docs/long-runs.md) or set DIP_COMMIT")
    results = tmp_path / "results"
    assert main(["run", "--profile", "smoke", "--images", "house", "--iterations", "1", "--results-dir", str(results)]) == 2
    assert capsys.readouterr().err == f"error: {problem}\n"
    assert not results.exists()
    monkeypatch.setenv("DIP_COMMIT", "1ebb1cd96c5c")
    assert provenance.checkout_problem() is None
    monkeypatch.delenv("DIP_COMMIT")
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to ask: not a broken checkout (the record names no commit)
    assert provenance.checkout_problem() is None
