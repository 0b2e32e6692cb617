"""Crash-safe builds: SIGKILL mid-build and mid-save, a full disk, a read-only folder, concurrent writers, leftovers.

The CI profile of reliability/crash_build.py (its full run kills the builder at 20 random points); the subprocess
tests use the same code. The in-process tests pin each mechanism: the writer lock, the atomic swap and its
two-rename fallback, the cleanup of what a killed writer left, FAISS write errors, folder permissions.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from index_store import atomic, store
from reliability import crash_build, crash_scenarios
from service.indexes import discover


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(builder arguments, --out, reference sha256 and scores): one real patchcore-build-index run."""
    return crash_build.prepare(tmp_path_factory.mktemp("crash"))


@pytest.mark.slow
@pytest.mark.parametrize("target, delay_ms", [("embed:2:pass", 5), ("write_index:1:after", 0),
                                              ("exchange:1:after", 0)])
def test_sigkill_leaves_a_whole_index_and_the_next_build_cleans_up(built, target, delay_ms):
    args, out, reference = built
    point = crash_build.crash_once(target, delay_ms, args, out, reference)
    assert point.killed, point
    assert point.old_loads_identical and point.server_sees == ["disc"], point
    assert point.rebuild_ok and not point.rebuild_leftovers and point.rebuild_identical, point
    if target.startswith("exchange"):  # killed after the swap, before the old index was removed
        assert point.leftovers and point.leftovers[0].startswith(".disc.tmp-"), point


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [crash_scenarios.disk_full, crash_scenarios.read_only,
                                      crash_scenarios.concurrent_builders], ids=lambda f: f.__name__)
def test_scenarios(built, tmp_path, scenario):
    args, out, reference = built
    row = scenario(tmp_path, args, out, reference)
    if row["ok"] is None:
        pytest.skip(row["outcome"])  # a tmpfs needs root; the mocked tests below cover the same code paths
    assert row["ok"], row


def _copy(index_dir, tmp_path):
    out = tmp_path / "indexes" / "idx"
    shutil.copytree(index_dir, out)
    return out


def test_faiss_write_errors_are_one_clear_error_and_keep_the_old_index(index_dir, tmp_path, monkeypatch):
    """FAISS reports ENOSPC as RuntimeError: before, it escaped the CLI's handler as a traceback."""
    out = _copy(index_dir, tmp_path)
    before = (out / store.INDEX_FILE).read_bytes()
    metadata, index = store.load_index(out)

    def full(*args):
        raise RuntimeError("Error in faiss::FileIOWriter::operator() ... write error: No space left on device")

    monkeypatch.setattr(store.faiss, "write_index", full)
    with pytest.raises(store.IndexStoreError, match="No space left on device.*free some space.*unchanged"):
        store.save(out, index, metadata, force=True)
    assert (out / store.INDEX_FILE).read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == [".idx.lock", "idx"]


def test_a_read_only_folder_is_refused_before_building(sample_dir, tmp_path, monkeypatch, capsys):
    from index_store import cli

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def never(*args, **kwargs):
        raise AssertionError("the build started")

    monkeypatch.setattr(atomic.os, "open", read_only)
    monkeypatch.setattr(cli, "build_index", never)
    assert cli.main(["--data", str(sample_dir), "--out", str(tmp_path / "idx"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Read-only file system" in err and "choose another --out" in err, err


def test_one_writer_per_folder(tmp_path):
    with atomic.WriterLock(tmp_path / "idx"):
        with pytest.raises(atomic.WriterBusyError, match=f"pid {os.getpid()}.*wait for it"):
            with atomic.WriterLock(tmp_path / "sub" / ".." / "idx"):  # the same folder by another path
                pass
    with atomic.WriterLock(tmp_path / "idx"):  # released: free again
        pass


def test_leftovers_of_killed_writers_are_removed_and_ignored(index_dir, tmp_path):
    out = _copy(index_dir, tmp_path)
    (out.parent / ".idx.tmp-99-dead").mkdir()
    (out.parent / ".idx.tmp-99-dead" / store.INDEX_FILE).write_bytes(b"half")
    shutil.copytree(out, out.parent / ".idx.old-98-dead" / "idx")
    assert sorted(discover(out.parent)) == ["idx"]  # the server ignores them
    metadata, index = store.load_index(out)
    store.save(out, index, metadata, force=True)
    assert sorted(p.name for p in out.parent.iterdir()) == [".idx.lock", "idx"]


def test_the_two_rename_fallback_is_recovered_when_cut_between_its_renames(index_dir, tmp_path, monkeypatch):
    """Where renameat2 cannot exchange, save renames old -> .NAME.old-*, new -> NAME; a kill between the two leaves
    no NAME: loading says where the old index is, and the next writer restores it before anything else."""
    out = _copy(index_dir, tmp_path)
    metadata, index = store.load_index(out)
    monkeypatch.setattr(store, "exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def cut(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new index would now move in: the process "dies" instead
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", cut)
    monkeypatch.setattr(store, "remove_tree", lambda path: None)  # a killed process cleans nothing
    with pytest.raises(KeyboardInterrupt):
        store.save(out, index, metadata, force=True)
    monkeypatch.undo()
    assert not out.exists()
    with pytest.raises(store.IndexStoreError, match="interrupted save left the previous index in .*run patchcore"):
        store.load_index(out)
    store.clean_stale(out)
    assert store.load_index(out)[0].index_sha256 == metadata.index_sha256
    assert sorted(p.name for p in out.parent.iterdir()) == [".idx.lock", "idx"]


def test_the_fallback_replaces_the_index_when_nothing_interrupts_it(index_dir, tmp_path, monkeypatch):
    import dataclasses

    out = _copy(index_dir, tmp_path)
    metadata, index = store.load_index(out)
    monkeypatch.setattr(store, "exchange", lambda a, b: False)
    store.save(out, index, dataclasses.replace(metadata, name="renamed"), force=True)
    assert store.read_metadata(out).name == "renamed"
    assert sorted(p.name for p in out.parent.iterdir()) == [".idx.lock", "idx"]


def test_a_saved_index_is_readable_by_other_users(index_dir, tmp_path):
    """tempfile.mkdtemp made index folders 0700: a server running as another user could not read them."""
    out = _copy(index_dir, tmp_path)
    metadata, index = store.load_index(out)
    store.save(tmp_path / "fresh", index, metadata)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o777 & ~umask


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    if not atomic.exchange(a, b):
        pytest.skip("this file system cannot exchange (the two-rename fallback is tested above)")
    assert ((a / "x").read_text(), (b / "x").read_text()) == ("b", "a")
