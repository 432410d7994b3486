"""The folder benchmark runs end to end on a few pairs (its figures come from bench/, not tests)."""

from bench import folders


def test_writes_pairs_and_times_both(tmp_path, monkeypatch):
    monkeypatch.setattr(folders, "RESULTS", tmp_path / "results")
    assert folders.main(["--pairs", "2", "--size", "32"]) == 0
    (result,) = (tmp_path / "results").glob("folders-*.json")
    text = result.read_text()
    assert '"cussim CPU"' in text and '"skimage loop"' in text
    assert '"cpu_backend": "cussim\'s NumPy reference"' in text  # the backend named for what it is
