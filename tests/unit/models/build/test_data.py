from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.build.data import (
    DataError,
    load_user_file,
    read_vader,
    stratified_split,
    tiny_sentiment,
)


def test_read_vader_labels_by_sign_and_drops_zero(tmp_path: Path) -> None:
    f = tmp_path / "g.txt"
    f.write_bytes(b"1_1\t2.5\tgood film\r\n1_2\t0\tneutral\r\n1_3\t-0.3\tmeh film\r\n\r\n")
    texts, labels = read_vader(f)
    assert texts == ["good film", "meh film"]
    assert labels == [1, 0]


def test_stratified_split_is_deterministic_and_balanced() -> None:
    texts = [f"t{i}" for i in range(1000)]
    labels = [i % 2 for i in range(1000)]
    a = stratified_split(texts, labels, seed=3)
    b = stratified_split(texts, labels, seed=3)
    assert [p.texts for p in a] == [p.texts for p in b]
    assert [len(p) for p in a] == [800, 100, 100]
    for part in a:
        assert sum(part.labels) == len(part) // 2
    assert not set(a[0].texts) & set(a[2].texts)


def test_a_larger_validation_split_comes_out_of_training_and_keeps_the_test_rows() -> None:
    texts = [f"t{i}" for i in range(1003)]
    labels = [int(i % 3 == 0) for i in range(1003)]
    base = stratified_split(texts, labels, seed=3)
    same = stratified_split(texts, labels, seed=3, val_fraction=0.1)
    assert [p.texts for p in same] == [p.texts for p in base]  # 0.1 is the default split
    tr, va, te = stratified_split(texts, labels, seed=3, val_fraction=0.2)
    assert sorted(te.texts) == sorted(base[2].texts)
    assert set(base[1].texts) < set(va.texts) and len(va) == 201
    assert len(tr) + len(va) == len(base[0]) + len(base[1])
    assert not set(tr.texts) & set(va.texts)
    with pytest.raises(DataError, match="val_fraction=0.95 leaves no training"):
        stratified_split(texts, labels, seed=3, val_fraction=0.95)


def test_user_csv_and_jsonl(tmp_path: Path) -> None:
    rows = [{"text": f"t {i}", "label": ["pos", "neg", "mid"][i % 3]} for i in range(60)]
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_user_file(j)
    assert ds.label_names == ["mid", "neg", "pos"]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 60
    c = tmp_path / "d.csv"
    c.write_text("text,label\n" + "\n".join(f"{r['text']},{r['label']}" for r in rows))
    assert load_user_file(c).fingerprint() == ds.fingerprint()


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.csv", "no such file"),
        ("txt,lab\na,b\n", "d.csv", "missing column"),
        ("text,label\n" + "x,1\n" * 10, "d.csv", "only one class"),
        ("text,label\n,1\nb,0\n", "d.csv", "empty 'text'"),
        ("hello", "d.parquet", "unsupported file type"),
        ('{"text": "a", "label": 1}\n{bad', "d.jsonl", "not valid JSON"),
    ],
)
def test_user_file_errors_name_the_problem(tmp_path: Path, content: str | None, name: str,
                                           message: str) -> None:
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(DataError, match=message):
        load_user_file(p)


def test_tiny_sentiment_has_both_classes() -> None:
    ds = tiny_sentiment(200)
    assert set(ds.train.labels) == {0, 1}


def test_grouped_holdout_keeps_groups_whole_and_is_seeded() -> None:
    from models.build.data import grouped_holdout

    groups = [f"p{i // 3}" for i in range(300)]  # 100 products, 3 reviews each
    held = grouped_holdout(groups, 50, seed=13)
    assert held == grouped_holdout(groups, 50, seed=13) != grouped_holdout(groups, 50, seed=14)
    assert 50 <= len(held) < 53
    held_groups = {groups[i] for i in held}
    assert all(i in held for i, g in enumerate(groups) if g in held_groups)


def test_load_data_takes_a_file_or_a_known_name(tmp_path: Path) -> None:
    from models.build.data import DATASETS, load_data

    assert {"movie-reviews", "fine-foods"} <= set(DATASETS)
    c = tmp_path / "d.csv"
    c.write_text("text,label\n" + "\n".join(f"t {i},{'ab'[i % 2]}" for i in range(30)))
    assert load_data(str(c)).label_names == ["a", "b"]
