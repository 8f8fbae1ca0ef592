"""Local and object-store paths through one set of helpers; the object store is a real local
S3-compatible server (the ``s3_bucket`` fixture)."""

import polars as pl
import pytest

from recsys_moe import storage
from recsys_moe.resumable_parts import PartsError, ResumableParts


def test_remote_paths_stay_strings_and_join_with_slashes(tmp_path):
    assert storage.is_remote("s3://b/k") and storage.is_remote("gs://b") and storage.is_remote("abfs://c@a/p")
    assert not storage.is_remote(tmp_path) and not storage.is_remote("relative/s3:/x")
    assert storage.join("s3://b/k/", "a", "b.parquet") == "s3://b/k/a/b.parquet"
    assert storage.join(tmp_path, "a", "b") == tmp_path / "a" / "b"
    assert storage.location("s3://b/k/") == "s3://b/k"


def test_expand_files_folders_and_globs_locally(tmp_path):
    for rel in ("logs/day=1/a.csv", "logs/day=2/b.csv", "logs/day=2/_SUCCESS", "logs/.hidden.csv", "other.parquet"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    want = [tmp_path / "logs/day=1/a.csv", tmp_path / "logs/day=2/b.csv"]
    assert storage.expand(tmp_path / "logs", (".csv",)) == want  # markers and hidden files left out
    assert storage.expand(f"{tmp_path}/logs/*/*.csv") == want
    assert storage.expand(f"{tmp_path}/**/*.csv") == want
    assert storage.expand(f"{tmp_path}/logs/day=[2]/*.csv") == want[1:]
    assert storage.expand(tmp_path / "other.parquet") == [tmp_path / "other.parquet"]
    assert storage.expand(tmp_path / "missing") == [] and storage.expand(f"{tmp_path}/*.json") == []


def test_object_store_listing_reading_writing_and_removal(s3_bucket):
    root = f"{s3_bucket}/storage-test"
    storage.write_parquet(pl.DataFrame({"a": [1, 2]}), f"{root}/d/p=1/x.parquet")
    storage.write_parquet(pl.DataFrame({"a": [3]}), f"{root}/d/p=2/y.parquet")
    storage.write_text(f"{root}/d/_SUCCESS", "")
    storage.write_text(f"{root}/m.json", '{"k": 1}')
    assert storage.read_text(f"{root}/m.json") == '{"k": 1}'
    files = storage.expand(f"{root}/d", (".parquet",))
    assert files == [f"{root}/d/p=1/x.parquet", f"{root}/d/p=2/y.parquet"]
    assert storage.expand(f"{root}/d/*/y.parquet") == files[1:]
    assert storage.is_file(files[0]) and not storage.is_file(f"{root}/d")
    assert storage.is_dir(f"{root}/d") and not storage.is_dir(f"{root}/nothing")
    size, mtime = storage.stat(files[0])
    assert size > 0 and mtime > 0
    assert pl.read_parquet(files).height == 3
    storage.remove(f"{root}/d")
    assert not storage.exists(f"{root}/d") and storage.is_file(f"{root}/m.json")
    with pytest.raises(storage.StorageError, match="no such object"):
        storage.stat(f"{root}/d/p=1/x.parquet")


def test_new_folder_refuses_an_existing_output_and_cleans_up_a_failed_one(s3_bucket):
    out = f"{s3_bucket}/new-folder"
    with storage.new_folder(out) as tmp:
        storage.write_text(storage.join(tmp, "MANIFEST.json"), "{}")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        with storage.new_folder(out):
            pass
    with pytest.raises(RuntimeError), storage.new_folder(out, overwrite=True) as tmp:
        storage.write_text(storage.join(tmp, "part.txt"), "half")
        raise RuntimeError("killed")
    assert not storage.exists(out)  # nothing half-written is left to be read
    storage.write_text(f"{out}/part.txt", "left by a killed write: no manifest")
    with storage.new_folder(out) as tmp:  # replaced without --overwrite
        storage.write_text(storage.join(tmp, "MANIFEST.json"), "{}")
    assert storage.files_below(out) == [f"{out}/MANIFEST.json"]


def test_resumable_parts_on_the_object_store(s3_bucket):
    out = f"{s3_bucket}/parts"
    parts = ResumableParts(out, "fp1")
    parts.write("part-00000.parquet", pl.DataFrame({"a": [1, 2]}))
    again = ResumableParts(out, "fp1")
    assert again.resumed and again.done("part-00000.parquet") == 2 and again.done("part-00001.parquet") is None
    with pytest.raises(PartsError, match="another input"):
        ResumableParts(out, "fp2")
    assert ResumableParts(out, "fp2", overwrite=True).done("part-00000.parquet") is None
