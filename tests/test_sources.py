"""Records from Parquet, Arrow, CSV/TSV, datasets folders and Hub datasets, with column mapping."""

import glob
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhfctl.errors import DataError, RlhfctlError
from rlhfctl.records import PROMPTS, SFT, read_records
from rlhfctl.sources import parse_field_map

GSM = {"question": ["What is 1+1?", "What is 2+2?"], "answer": ["1+1=2\n#### 2", "2+2=4\n#### 4"]}
QA = {"prompt": "question", "answer": "answer"}


def test_parquet_with_column_mapping(tmp_path):
    path = tmp_path / "gsm.parquet"
    pq.write_table(pa.table(GSM), path)
    records = read_records(path, PROMPTS, fields={"prompt": "question"})
    assert [r["prompt"] for r in records] == GSM["question"]
    assert records[1]["answer"] == "2+2=4\n#### 4"
    assert "question" not in records[0] and len(records[0]["id"]) == 12


def test_parquet_chat_columns_pass_through(tmp_path):
    chats = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]]
    pq.write_table(pa.table({"messages": chats, "completion": [[{"role": "assistant", "content": "Hello."}]]}),
                   tmp_path / "chat.parquet")
    records = read_records(tmp_path / "chat.parquet", SFT, fields={"prompt": "messages"})
    assert records[0]["prompt"] == chats[0]
    assert records[0]["completion"] == [{"role": "assistant", "content": "Hello."}]


def test_parquet_bad_value_names_the_row(tmp_path):
    pq.write_table(pa.table({"prompt": ["ok", "fine", None]}), tmp_path / "p.parquet")
    with pytest.raises(DataError) as err:
        read_records(tmp_path / "p.parquet", PROMPTS)
    assert str(err.value).startswith(f"{tmp_path / 'p.parquet'}:3: field 'prompt'")


def test_csv_and_tsv_rows_are_file_lines(tmp_path):
    (tmp_path / "d.csv").write_text('answer,question\n1001,"What is 1,000 + 1?"\n7\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:3: field 'prompt'"):  # the short row lacks the question
        read_records(tmp_path / "d.csv", PROMPTS, fields=QA)
    (tmp_path / "d.csv").write_text('answer,question\n1001,"What is 1,000 + 1?"\n', encoding="utf-8")
    assert read_records(tmp_path / "d.csv", PROMPTS, fields=QA)[0]["prompt"] == "What is 1,000 + 1?"
    (tmp_path / "d.tsv").write_text("question\tanswer\nWhat is 1+1?\t2\n", encoding="utf-8")
    records = read_records(tmp_path / "d.tsv", PROMPTS, fields=QA)
    assert records[0]["prompt"] == "What is 1+1?" and records[0]["answer"] == "2"


def test_saved_datasets_folder_and_arrow_file(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(GSM),
                               "test": datasets.Dataset.from_dict({k: v[:1] for k, v in GSM.items()})})
    dd.save_to_disk(tmp_path / "gsm")
    assert len(read_records(f"{tmp_path / 'gsm'}@test", PROMPTS, fields=QA)) == 1
    with pytest.raises(RlhfctlError, match=r"holds several splits \(train, test\); name one as .*gsm@SPLIT"):
        read_records(tmp_path / "gsm", PROMPTS, fields=QA)
    with pytest.raises(RlhfctlError, match="has no split 'dev'"):
        read_records(f"{tmp_path / 'gsm'}@dev", PROMPTS, fields=QA)
    assert len(read_records(tmp_path / "gsm" / "train", PROMPTS, fields=QA)) == 2  # one Dataset folder
    arrow = glob.glob(str(tmp_path / "gsm" / "train" / "*.arrow"))[0]
    assert [r["prompt"] for r in read_records(arrow, PROMPTS, fields=QA)] == GSM["question"]


def _cache_hub_dataset(tmp_path, monkeypatch, repo="acme/gsm-mini"):
    """Lay out `repo` in a temporary datasets cache, as a first online load would leave it, and go offline."""
    import datasets

    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table(GSM), src / "train.parquet")
    pq.write_table(pa.table({k: v[1:] for k, v in GSM.items()}), src / "test.parquet")
    build = tmp_path / "build"
    datasets.load_dataset("parquet", data_files={"train": str(src / "train.parquet"), "test": str(src / "test.parquet")},
                          cache_dir=str(build))
    built = Path([p for p in glob.glob(str(build / "parquet" / "*" / "*" / "*")) if os.path.isdir(p)][0])
    cache = tmp_path / "datasets-cache"
    namespace, name = repo.split("/")
    dest = cache / f"{namespace}___{name}" / "default" / "0.0.0" / built.name
    shutil.copytree(built, dest)
    for f in dest.glob("parquet-*.arrow"):
        f.rename(dest / f.name.replace("parquet-", f"{name}-"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hub_dataset_from_the_cache_offline(tmp_path, monkeypatch):
    _cache_hub_dataset(tmp_path, monkeypatch)
    assert [r["prompt"] for r in read_records("hf:acme/gsm-mini", PROMPTS, fields=QA)] == GSM["question"]
    assert [r["prompt"] for r in read_records("hf:acme/gsm-mini@test", PROMPTS, fields=QA)] == GSM["question"][1:]
    with pytest.raises(RlhfctlError, match=r"^hf:acme/other: cannot load the dataset \(offline"):
        read_records("hf:acme/other", PROMPTS)


def test_field_mapping_errors_are_one_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question": "q"}) + "\n")
    assert read_records(path, PROMPTS, fields={"prompt": "question"})[0]["prompt"] == "q"
    with pytest.raises(RlhfctlError, match=r"p\.jsonl:1: --field maps from column 'problem', which the data lacks \(columns: question\)"):
        read_records(path, PROMPTS, fields={"prompt": "problem"})
    assert parse_field_map(["prompt=question", " answer = solution "]) == {"prompt": "question", "answer": "solution"}
    for bad in (["prompt"], ["=x"], ["prompt=a", "prompt=b"]):
        with pytest.raises(RlhfctlError, match="--field"):
            parse_field_map(bad)


def test_unreadable_table_files(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(RlhfctlError, match=r"bad\.parquet: not readable as Parquet"):
        read_records(tmp_path / "bad.parquet", PROMPTS)
    with pytest.raises(RlhfctlError, match=r"missing\.csv: no such file"):
        read_records(tmp_path / "missing.csv", PROMPTS)
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="no records"):
        read_records(tmp_path / "empty.parquet", PROMPTS)


def test_large_sources_show_a_progress_bar(tmp_path, monkeypatch, capsys):
    import rlhfctl.sources as sources

    pq.write_table(pa.table(GSM), tmp_path / "gsm.parquet")
    read_records(tmp_path / "gsm.parquet", PROMPTS, fields=QA)
    assert "reading" not in capsys.readouterr().err
    monkeypatch.setattr(sources, "LARGE", 2)
    read_records(tmp_path / "gsm.parquet", PROMPTS, fields=QA)
    assert "reading gsm.parquet" in capsys.readouterr().err
