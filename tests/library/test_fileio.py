"""Atomic writes, including where directories cannot be renamed (Cloud Storage FUSE at /gcs)."""

import errno
import os

import pytest

from modelpress.core import fileio
from modelpress.deploy import repository


@pytest.fixture
def no_directory_renames(monkeypatch):
    """Behave like Cloud Storage FUSE on a flat bucket: files rename, directories do not."""
    real = os.replace

    def replace(src, dst):
        if os.path.isdir(src):
            raise OSError(errno.ENOTSUP, "directory rename not supported", str(src))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("pre_created", [False, True])
def test_atomic_dir_commits_on_rename_and_on_copy(tmp_path, monkeypatch, request, pre_created):
    for fuse in (False, True):
        if fuse:
            request.getfixturevalue("no_directory_renames")
        final = tmp_path / f"out-{fuse}"
        if pre_created:  # KFP creates output folders before the step runs
            final.mkdir()
        with fileio.atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("a")
            (tmp / "sub").mkdir()
            (tmp / "sub" / "b.txt").write_text("b")
        assert (final / "a.txt").read_text() == "a" and (final / "sub" / "b.txt").read_text() == "b"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no leftovers


def test_a_failed_write_leaves_nothing(tmp_path, no_directory_renames):
    with pytest.raises(RuntimeError):
        with fileio.atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_repository_deploy_without_directory_renames(tmp_path, no_directory_renames, mlp_onnx_dir):
    repo = tmp_path / "repo"
    assert repository.deploy(mlp_onnx_dir, repo, "digits") == 1
    assert repository.deploy(mlp_onnx_dir, repo, "digits") == 2
    assert repository.versions(repo, "digits") == [1, 2]
    assert not [p for p in (repo / "digits").iterdir() if p.name.startswith(".")]
    with pytest.raises(FileExistsError):
        fileio.replace_dir(tmp_path / "repo" / "digits" / "1", tmp_path / "repo" / "digits" / "2")
