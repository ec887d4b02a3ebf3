"""eqface.paths: the shared data folder is found one way, an explicit setting wins, ``shared:`` paths resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from eqface import paths


def test_environment_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.npz").write_bytes(b"x")
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    assert paths.shared_data_dir() == tmp_path
    assert paths.resolve("shared:weights/w.npz") == tmp_path / "weights" / "w.npz"


def test_missing_folder_and_file_name_where_they_were_looked_for(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "absent"))
    assert paths.shared_data_dir() is None
    with pytest.raises(FileNotFoundError, match="absent"):
        paths.require_shared_data_dir()
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        paths.resolve("shared:nothing.npz")


def test_plain_paths_pass_through(tmp_path: Path) -> None:
    assert paths.resolve(tmp_path / "a.npz") == tmp_path / "a.npz"
    assert paths.resolve("relative/b.npz") == Path("relative/b.npz")


def test_default_is_shared_data_beside_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    expected = Path(paths.__file__).resolve().parents[2] / "shared" / "data"
    if not expected.is_dir():
        pytest.skip("no shared/data beside this checkout")
    assert paths.shared_data_dir() == expected
