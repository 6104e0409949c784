"""Finding and decoding a folder-of-classes dataset."""

import numpy as np
import pytest
from PIL import Image

from edgeconv.train.dataset import DataError, find_dataset, load_split


def make_dataset(root, classes=("cats", "dogs"), per_class=3, splits=("train", "validation",
                 "test")):
    for split in splits:
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(per_class):
                colour = (200 * index, 50, 100 + number)
                Image.new("RGB", (60, 40), colour).save(folder / f"{name}.{number + 1}.jpg")
    return root


def test_classes_are_sorted_folder_names_and_files_sort_naturally(tmp_path):
    root = make_dataset(tmp_path / "d", classes=("dogs", "cats"), per_class=11)
    dataset = find_dataset(root, limit=3)
    assert dataset.classes == ["cats", "dogs"]
    names = [path.name for path, _ in dataset.splits["train"]]
    assert names == ["cats.1.jpg", "cats.2.jpg", "cats.3.jpg",
                     "dogs.1.jpg", "dogs.2.jpg", "dogs.3.jpg"]
    assert dataset.counts("test") == [3, 3]


def test_load_split_decodes_once_then_reads_the_cache(tmp_path, monkeypatch):
    dataset = find_dataset(make_dataset(tmp_path / "d"))
    images, labels = load_split(dataset, "train", (20, 30))
    assert images.shape == (6, 20, 30, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr("edgeconv.train.dataset.load_image", no_decoding)
    again, _ = load_split(dataset, "train", (20, 30))
    assert np.array_equal(images, again)

    # A changed photo changes the key: it is decoded again, not served stale.
    Image.new("RGB", (60, 40), "white").save(dataset.splits["train"][0][0])
    with pytest.raises(AssertionError, match="decoded again"):
        load_split(dataset, "train", (20, 30))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: None, "data folder not found"),
        (lambda root: make_dataset(root, splits=("train", "validation")), "split folder missing"),
        (lambda root: make_dataset(root, classes=("cats",)), "need at least two"),
        (lambda root: [p.unlink() for p in (make_dataset(root) / "test" / "dogs").iterdir()],
         "no images"),
    ],
)
def test_layout_errors_name_the_path(tmp_path, damage, message):
    root = tmp_path / "d"
    damage(root)
    with pytest.raises(DataError, match=message):
        find_dataset(root)


def test_an_unreadable_training_image_is_a_clear_error(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "train" / "cats" / "cats.2.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError, match=r"cats\.2\.jpg.*train split"):
        load_split(find_dataset(root), "train")


def test_the_cache_is_a_memory_map_that_gives_the_batches_of_photos_in_memory(
        tmp_path, monkeypatch):
    from edgeconv.train.trainer import BatchStream

    dataset = find_dataset(make_dataset(tmp_path / "d", per_class=7))
    cached, labels = load_split(dataset, "train", (20, 30))
    again, _ = load_split(dataset, "train", (20, 30))  # read back from the cache file
    monkeypatch.setenv("EDGECONV_CACHE", "off")
    in_memory, _ = load_split(dataset, "train", (20, 30))
    assert isinstance(again, np.memmap) and not again.flags.writeable
    assert not isinstance(in_memory, np.memmap)
    for images in (cached, again):
        stream = BatchStream(images, labels, batch_size=4, steps=5, seed=3)
        reference = BatchStream(in_memory, labels, batch_size=4, steps=5, seed=3)
        for index in range(5):
            for got, expected in zip(stream[index], reference[index]):
                assert np.array_equal(got, expected)


def test_a_failed_decode_leaves_no_cache_file(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGECONV_CACHE", str(cache))
    root = make_dataset(tmp_path / "d", per_class=5)
    (root / "train" / "dogs" / "dogs.5.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError):
        load_split(find_dataset(root), "train")
    assert list(cache.iterdir()) == []


def test_training_feeds_each_epoch_its_own_batches_without_tf_data_autotuning():
    # The epoch a stream yields is Keras's own count (a resumed run starts at its epoch), and
    # the pipeline fit gets has no autotuner (whose sleeps held up every epoch's end).
    from edgeconv.train.backend import import_keras
    from edgeconv.train.trainer import BatchStream, EpochOfStream, keras_input

    keras = import_keras()

    class Recorded(BatchStream):
        served: list = []

        def __getitem__(self, index):
            self.served.append((self.epoch, index))
            return super().__getitem__(index)

    images = np.arange(12 * 4 * 4 * 3, dtype=np.uint8).reshape(12, 4, 4, 3)
    labels = np.arange(12, dtype=np.float32) % 2
    stream = Recorded(images, labels, batch_size=4, steps=3, seed=0, start_epoch=1)
    data = keras_input(stream)
    if keras.backend.backend() == "tensorflow":
        assert data.options().autotune.enabled is False
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    Recorded.served.clear()
    model.fit(data, epochs=3, initial_epoch=1, shuffle=False, verbose=0,
              callbacks=[EpochOfStream(stream)])
    assert sorted(set(Recorded.served)) == [(epoch, index) for epoch in (1, 2)
                                            for index in range(3)]
    epochs = [epoch for epoch, _ in Recorded.served]
    assert epochs == sorted(epochs)  # no pass of a later epoch drawn early
