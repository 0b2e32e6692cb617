"""Without the ray extra, --ray says how to install it (this test needs no ray)."""

import sys

from index_store.cli import main


def test_ray_without_the_extra_says_how_to_install_it(sample_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed.ray_build", None)  # what a missing `ray` looks like to the import
    assert main(["--data", str(sample_dir), "--out", str(tmp_path / "idx"), "--no-progress", "--ray", "auto"]) == 1
    err = capsys.readouterr().err
    assert "pip install '.[ray]'" in err and not (tmp_path / "idx").exists()


def test_ray_options_fail_fast(sample_dir, tmp_path, capsys):
    assert main(["--data", str(sample_dir), "--out", str(tmp_path / "idx"), "--ray", "auto",
                 "--ray-margin", "1.5"]) == 1
    assert "--ray-margin must be in [0, 1)" in capsys.readouterr().err
