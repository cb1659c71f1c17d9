"""Training data read incrementally: the examples table streamed as chunks of whole ad groups
(features.example_stream), batches cut across chunks (models.batching.batch_chunks), images kept
encoded (models.batching.EncodedImages), and a streamed run that trains the very weights of an
in-memory one.

The table is written by Spark with the project's writer, in several files of one sorted row range
each, as the examples job writes it.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from features.example_stream import ExampleStream, group_cut, table_chunks
from features.examples import FILE_COLUMNS, FILE_SCHEMA, read_example_files, validation_mask, validation_split
from models.batching import EncodedImages, batch_chunks, plan_batches
from models.synthetic import make_examples, make_spec
from models.train import train
from spark_jobs.example_assembly import write_examples
from spark_jobs.train_model import decode_images

from test_train import cfg_with, weights


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _stored(window) -> pa.Table:
    table = pa.Table.from_pandas(window, preserve_index=False)
    n = table.num_rows
    return (table.append_column("run_date", pa.array(np.zeros(n, np.int32)).cast(pa.date32()))
            .select(list(FILE_COLUMNS)).cast(FILE_SCHEMA).append_column("split", pa.repeat(pa.scalar("train"), n)))


@pytest.fixture(scope="module")
def examples(spark, tmp_path_factory):
    """(uri, spec, images, encoded images) of a Spark-written examples table in 4 files; the
    encoded images cache 10 of the 30 decoded, so training also evicts and decodes again."""
    spec = make_spec(n_categories=4, vocab=13)
    window, images = make_examples(spec, n_ads=30, impressions_per_ad=(3, 17), image_size=32, seed=3)
    uri = str(tmp_path_factory.mktemp("stream") / "examples")
    df = spark.createDataFrame(_stored(window)).repartitionByRange(4, "row_idx").sortWithinPartitions("row_idx")
    write_examples(df, uri)
    encoded = EncodedImages(pa.array(list(images), pa.int64()), pa.array([_png(p) for p in images.values()]),
                            cache_bytes=10 * 32 * 32 * 3)
    return uri, spec, images, encoded


def _boundaries_are_group_boundaries(chunks: list[pa.Table]) -> None:
    for a, b in zip(chunks, chunks[1:]):
        assert a.column("group_id")[-1].as_py() != b.column("group_id")[0].as_py()


@pytest.mark.parametrize("chunk_rows", [1, 7, 100_000])
def test_the_stream_gives_every_row_once_in_order_cut_at_group_boundaries(examples, chunk_rows):
    uri, *_ = examples
    whole = read_example_files(uri, "train")
    stream = ExampleStream(uri, "train", chunk_rows=chunk_rows)
    assert len(stream._files) == 4 and stream.num_rows == whole.num_rows
    chunks = list(stream)
    assert pa.concat_tables(chunks).equals(whole)
    _boundaries_are_group_boundaries(chunks)
    if chunk_rows == 7:
        assert len(chunks) > 4  # cut inside files, groups carried across reads and files
        largest_group = max(np.unique(whole.column("group_id").to_numpy(), return_counts=True)[1])
        assert max(c.num_rows for c in chunks) < 2 * 7 + largest_group
    if chunk_rows == 100_000:
        assert len(chunks) == 1


def test_a_column_subset_and_the_validation_filter_keep_row_order(examples):
    uri, *_ = examples
    whole = read_example_files(uri, "train")
    fit, valid = validation_split(whole, 0.3, seed=5)
    kept = list(ExampleStream(uri, "train", columns=["row_idx", "label"], chunk_rows=9,
                              keep=lambda t: ~validation_mask(t, 0.3, 5)))
    assert kept[0].column_names == ["row_idx", "label"]
    assert pa.concat_tables(kept).equals(fit.select(["row_idx", "label"]))
    chosen = pa.concat_tables(ExampleStream(uri, "train", chunk_rows=9, keep=lambda t: validation_mask(t, 0.3, 5)))
    assert chosen.equals(valid)
    refiltered = ExampleStream(uri, "train", chunk_rows=9).filtered(lambda t: validation_mask(t, 0.3, 5))
    assert pa.concat_tables(refiltered).equals(valid)


def test_closing_the_stream_early_stops_its_reader(examples):
    uri, *_ = examples
    chunks = iter(ExampleStream(uri, "train", chunk_rows=3, prefetch=1))
    next(chunks)
    assert any(t.name == "examples-train" for t in threading.enumerate())
    chunks.close()
    assert not any(t.name == "examples-train" for t in threading.enumerate())


def test_rows_out_of_order_are_refused(spark, examples, tmp_path):
    uri, *_ = examples
    whole = read_example_files(uri, "train")
    shuffled = whole.take(np.random.default_rng(0).permutation(whole.num_rows))
    out = str(tmp_path / "unsorted")
    write_examples(spark.createDataFrame(shuffled.append_column("split", pa.repeat(pa.scalar("train"),
                                                                                  whole.num_rows))), out)
    with pytest.raises(ValueError, match="not in increasing row_idx order"):
        list(ExampleStream(out, "train"))


def test_the_stream_names_a_missing_split(examples):
    uri, *_ = examples
    with pytest.raises(FileNotFoundError, match="no holdout examples"):
        ExampleStream(uri, "holdout")
    with pytest.raises(ValueError, match="unknown examples column"):
        ExampleStream(uri, "train", columns=["nope"])


def test_batches_cut_across_chunks_equal_one_plan_over_all_rows():
    rng = np.random.default_rng(1)
    for trial in range(40):
        sizes = rng.integers(1, 30, rng.integers(1, 60))
        group_id = np.repeat(rng.permutation(len(sizes)), sizes)
        table = pa.table({"group_id": group_id, "row": np.arange(len(group_id))})
        batch_size = int(rng.integers(1, 50))
        expected = [(int(table.column("row")[s].as_py()), int(table.column("row")[e - 1].as_py()) + 1)
                    for s, e in plan_batches(group_id, batch_size)]
        got = []
        for part, plan in batch_chunks(table_chunks(table, int(rng.integers(1, 80))), batch_size):
            rows = part.column("row").to_numpy()
            got += [(int(rows[s]), int(rows[e - 1]) + 1) for s, e in plan]
        assert got == expected, trial


def test_table_chunks_keep_groups_whole():
    group_id = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 3, 4])
    chunks = list(table_chunks(pa.table({"group_id": group_id}), 4))
    assert [c.num_rows for c in chunks] == [4, 2, 5, 1]
    _boundaries_are_group_boundaries(chunks)
    assert group_cut(np.array([5, 5, 6, 6, 6])) == 2 and group_cut(np.array([5, 5])) == 0


def test_encoded_images_give_back_the_pixels_and_name_what_is_wrong(examples):
    _, _, images, encoded = examples
    assert len(encoded) == len(images) and sorted(encoded) == sorted(images)
    ad = next(iter(images))
    assert np.array_equal(encoded[ad], images[ad])  # PNG is lossless: the pixels written come back
    assert np.array_equal(decode_images([_png(images[ad])], [ad])[ad], images[ad])
    assert encoded.get(-1) is None
    with pytest.raises(ValueError, match="ad 7 has more than one image"):
        EncodedImages(np.array([7, 7]), [b"a", b"b"])


def test_decoded_images_are_cached_least_recently_used_first_within_the_budget():
    pixels = {a: np.full((4, 4, 3), a, np.uint8) for a in (1, 2, 3)}  # 48 bytes each
    images = EncodedImages(np.array(list(pixels)), [_png(p) for p in pixels.values()], cache_bytes=100)
    assert all(np.array_equal(images[a], p) for a, p in pixels.items()) and images.decoded == 3
    assert images[3] is images[3] and images.decoded == 3  # cached (1 was dropped for 3)
    assert not images[3].flags.writeable  # shared: nobody may change it in place
    _ = images[2]  # 2 is now the most recent, 3 the least
    _ = images[1]  # decoded again; 3 is dropped
    assert images.decoded == 4
    _ = images[2]
    assert images.decoded == 4
    _ = images[3]
    assert images.decoded == 5
    uncached = EncodedImages(np.array(list(pixels)), [_png(p) for p in pixels.values()])
    assert uncached[1] is not uncached[1] and uncached.decoded == 2


@pytest.mark.parametrize("variant", ["cscnn", "cnn_fixed"])
def test_streamed_training_trains_the_weights_of_in_memory_training(examples, tmp_path, variant):
    uri, spec, images, encoded = examples
    common = dict(model__variant=variant, train__epochs=2, train__eval_every=2, train__batch_size=24,
                  train__early_stopping_patience=100)
    whole = read_example_files(uri, "train")
    fit, valid = validation_split(whole, 0.2, seed=5)
    memory = train(cfg_with(**common), spec, fit, valid, images, tmp_path / "memory")
    stream = ExampleStream(uri, "train", chunk_rows=5, keep=lambda t: ~validation_mask(t, 0.2, 5))
    decoded = encoded.decoded
    streamed = train(cfg_with(**common, train__chunk_rows=5), spec, stream, valid, encoded, tmp_path / "stream")
    assert encoded.decoded - decoded > len(images)  # the cache, too small for every ad, evicted and decoded again
    assert streamed["train_impressions"] == memory["train_impressions"] == 2 * fit.num_rows
    assert streamed["steps"] == memory["steps"] and streamed["auc"] == memory["auc"]
    a, b = weights(tmp_path / "memory" / "model.pt"), weights(tmp_path / "stream" / "model.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name
