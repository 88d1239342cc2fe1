"""Where a record's commit comes from."""

from bench import provenance


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
