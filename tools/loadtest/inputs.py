"""Input pools for the bench: the movie-review split, a user file, or the generated tiny set."""

from __future__ import annotations

import sys

from tools.loadtest.workloads import TextPool

DATASETS = ("movie-reviews", "tiny")
SPLITS = ("test", "val", "train")


def load_text_pool(data_file: str | None = None, dataset: str = "movie-reviews",
                   split: str = "test", limit: int | None = None) -> TextPool:
    """Texts and labels of one split. `--data FILE` wins; the movie reviews fall back to the
    generated tiny set (with a note on stderr) when they cannot be fetched."""
    from models.build import data as d  # torch-free

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if data_file:
        ds = d.load_user_file(data_file)
    elif dataset == "tiny":
        ds = d.tiny_sentiment()
    elif dataset == "movie-reviews":
        try:
            ds = d.load_movie_reviews()
        except (d.DataError, OSError) as e:
            print(f"eeserve bench: movie reviews unavailable ({e}); using the generated tiny set",
                  file=sys.stderr)
            ds = d.tiny_sentiment()
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    part = getattr(ds, split)
    texts, labels = list(part.texts), list(part.labels)
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
    return TextPool(texts, labels, list(ds.label_names), f"{ds.name}:{split}")
