"""A user's own data: ImageDataset.from_torch / from_arrays round trips and errors, .npz files of
arrays, Python data functions, and the workflow and ``unlearn()`` on such data (with the
identity checks of a data set given in memory)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, Subset

from coun_fast.data import DatasetSplits, ImageDataset, load_dataset
from coun_fast.data.convert import from_torch, load_python, save_arrays
from coun_fast.data.identity import dataset_identity

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, size=(12, 6, 5, 3), dtype=np.uint8)  # H != W catches transposes
LABELS = np.arange(12) % 3


class Items(Dataset):
    """A map-style data set of ``(transform(image), label)`` over :data:`PIXELS`."""

    def __init__(self, transform, classes=None, labels=LABELS):
        self.transform, self.labels = transform, labels
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(PIXELS)

    def __getitem__(self, i):
        return self.transform(PIXELS[i]), self.labels[i]


TRANSFORMS = {
    "pil": lambda a: Image.fromarray(a),
    "pil_rgba": lambda a: Image.fromarray(np.dstack([a, np.full(a.shape[:2], 7, np.uint8)])),
    "hwc_uint8_array": lambda a: a.copy(),
    "chw_uint8_tensor": lambda a: torch.from_numpy(a).permute(2, 0, 1),
    "chw_float_tensor": lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255,  # ToTensor()
    "hwc_float_array": lambda a: a.astype(np.float64) / 255,
    "chw_half_tensor": lambda a: torch.from_numpy(a).permute(2, 0, 1).double().div(255).half(),
    "hwc_int64_array": lambda a: a.astype(np.int64),
}


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
def test_from_torch_round_trips_every_image_kind(kind):
    data = ImageDataset.from_torch(Items(TRANSFORMS[kind], classes=["a", "b", "c"]), progress=False)
    assert data.images.dtype == np.uint8 and data.images.shape == PIXELS.shape
    if kind == "chw_half_tensor":  # half precision keeps 11 bits: one level of 256 at most
        assert np.abs(data.images.astype(int) - PIXELS).max() <= 1
    else:
        assert np.array_equal(data.images, PIXELS)
    assert data.labels.tolist() == LABELS.tolist() and data.classes == ("a", "b", "c")
    assert (data.name, data.split) == ("Items", "train")


def test_from_torch_grey_images_become_rgb_and_classes_come_from_the_wrapped_set():
    grey = PIXELS[..., 0]
    for transform in (lambda i: Image.fromarray(grey[i]), lambda i: torch.from_numpy(grey[i])[None],
                      lambda i: grey[i]):
        data = ImageDataset.from_torch(Subset(Items(lambda a: a, classes=["x", "y", "z"]), range(12)),
                                       progress=False)
        assert data.classes == ("x", "y", "z")
        items = [(transform(i), int(LABELS[i])) for i in range(12)]
        data = ImageDataset.from_torch(items, progress=False, name="grey", split="test")
        assert np.array_equal(data.images, np.repeat(grey[..., None], 3, axis=-1))
        assert data.classes == ("0", "1", "2") and (data.name, data.split) == ("grey", "test")


def test_from_torch_resizes_and_reads_with_workers():
    sizes = [(6, 5), (9, 4)] * 6
    items = [(Image.fromarray(np.zeros((*sizes[i], 3), np.uint8)), 0) for i in range(12)]
    with pytest.raises(ValueError, match=r"dataset\[1\] is 9x4 but the first is 6x5; pass image_size"):
        ImageDataset.from_torch(items, progress=False)
    assert ImageDataset.from_torch(items, image_size=(8, 7), progress=False).image_size == (8, 7)
    data = from_torch(Items(TRANSFORMS["pil"]), workers=2, progress=False)
    assert np.array_equal(data.images, PIXELS) and data.labels.tolist() == LABELS.tolist()


class Streaming(IterableDataset):
    def __iter__(self):
        yield PIXELS[0], 0


@pytest.mark.parametrize("dataset, error, message", [
    (Items(lambda a: a.astype(np.float32) / 255 * 2 - 1), ValueError,
     r"the image of dataset\[0\] has float values in \[-1, 0.9451\]; float images must lie in \[0, 1\]"),
    (Items(lambda a: a.astype(np.int32) * 2), ValueError, r"dataset\[0\] has integer values in \[\d+, \d+\]"),
    (Items(lambda a: np.dstack([a, a[..., :1]])), ValueError, r"shape \(6, 5, 4\): an image must have 1 or 3"),
    (Items(lambda a: "cat.png"), TypeError, r"the image of dataset\[0\] is a str"),
    (Items(lambda a: Image.fromarray(a[..., 0].astype(np.int32) * 100, mode="I")), ValueError, r"mode 'I'"),
    (Items(lambda a: a, labels=np.eye(12, 3)), ValueError, r"label of dataset\[0\] has shape \(3,\).*not one-hot"),
    (Items(lambda a: a, labels=["cat"] * 12), ValueError, r"label of dataset\[0\] is 'cat'"),
    (Items(lambda a: a, labels=[0.0] * 12), ValueError, r"label of dataset\[0\] is 0.0"),
    (Items(lambda a: a, classes=["a", "b"]), ValueError, r"labels must lie in \[0, 2\)"),
    ([(PIXELS[0], 0, "extra")], ValueError, r"dataset\[0\] is a 3-tuple; from_torch needs items \(image, label\)"),
    ([], ValueError, "is empty"),
    (Streaming(), TypeError, "map-style torch Dataset"),
])
def test_from_torch_errors_name_the_item(dataset, error, message):
    with pytest.raises(error, match=message):
        ImageDataset.from_torch(dataset, progress=False)


@pytest.mark.parametrize("images", [
    PIXELS, torch.from_numpy(PIXELS).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(PIXELS).float() / 255,
    [Image.fromarray(a) for a in PIXELS], list(PIXELS.astype(np.float32) / 255),
], ids=["nhwc_uint8", "nchw_tensor", "nhwc_float_tensor", "pil_list", "float_list"])
def test_from_arrays_round_trips(images):
    """uint8 / 255 comes back exactly; a tensor's channels are last when only the last dimension can be them."""
    data = ImageDataset.from_arrays(images, torch.from_numpy(LABELS), classes=np.array(["a", "b", "c"]))
    assert np.array_equal(data.images, PIXELS) and data.labels.dtype == np.int64
    assert data.classes == ("a", "b", "c") and data.name == "arrays"
    assert data.normalization == ImageDataset.from_arrays(PIXELS, LABELS).normalization


@pytest.mark.parametrize("images, labels, message", [
    (PIXELS, LABELS[:5], "images and labels disagree in length: 12 images, 5 labels"),
    (PIXELS[..., 0][..., None, None], LABELS, r"images has shape \(12, 6, 5, 1, 1\)"),
    (PIXELS.astype(np.float32), LABELS, r"images has float values in \[0, 255\]"),
    (PIXELS, LABELS.astype(np.float32), "labels must be N integers; got dtype float32"),
    ([PIXELS[0], PIXELS[0][:3]], [0, 1], r"images\[1\] is 3x5 but images\[0\] is 6x5; give image_size"),
    ("pixels.npy", LABELS, "images must be an array, a tensor or a sequence of images; got str"),
])
def test_from_arrays_errors(images, labels, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ImageDataset.from_arrays(images, labels)


def _splits() -> DatasetSplits:
    return DatasetSplits(ImageDataset.from_arrays(PIXELS, LABELS, ["a", "b", "c"], name="mine"),
                         ImageDataset.from_arrays(PIXELS[:6], LABELS[:6], ["a", "b", "c"], name="mine", split="test"))


def test_npz_of_arrays_both_key_schemes(tmp_path):
    splits = _splits()
    path = save_arrays(tmp_path / "mine.npz", splits)
    loaded = load_dataset("npz", path)
    assert dataset_identity(loaded) == dataset_identity(splits)
    np.savez(tmp_path / "keras.npz", x_train=PIXELS[..., 0], y_train=LABELS, x_test=PIXELS[:4, ..., 0], y_test=LABELS[:4])
    keras = load_dataset("npz", tmp_path / "keras.npz", image_size=8)
    assert keras.train.image_size == (8, 8) and keras.test.classes == ("0", "1", "2") and keras.train.name == "keras"
    np.savez(tmp_path / "odd.npz", images=PIXELS)
    with pytest.raises(ValueError, match="lacks the keys"):  # neither arrays nor packed JPEG
        load_dataset("npz", tmp_path / "odd.npz")


SOURCE = '''
import numpy as np
from torch.utils.data import TensorDataset
import torch

def datasets():
    images = torch.from_numpy(np.arange(8 * 4 * 4 * 3, dtype=np.uint8).reshape(8, 4, 4, 3)).permute(0, 3, 1, 2)
    labels = torch.arange(8) % 2
    return TensorDataset(images, labels), {"images": 0}

def pairs():
    images = np.zeros((4, 5, 5), np.uint8)
    return {"train": (images, [0, 1, 0, 1]), "test": (images[:2], [1, 0])}

def tensors():
    images = torch.from_numpy(np.arange(8 * 4 * 4 * 3, dtype=np.uint8).reshape(8, 4, 4, 3)).permute(0, 3, 1, 2)
    labels = torch.arange(8) % 2
    return TensorDataset(images, labels), TensorDataset(images[:4], labels[:4])

not_callable = 3
'''


def test_python_data_functions(tmp_path, monkeypatch):
    (tmp_path / "user_data_module.py").write_text(SOURCE)
    monkeypatch.chdir(tmp_path)
    from_module = load_dataset("python", "user_data_module:tensors")
    from_file = load_dataset("python", f"{tmp_path / 'user_data_module.py'}:tensors", image_size=8)
    assert from_module.train.name == "tensors" and len(from_module.test) == 4 and from_module.train.image_size == (4, 4)
    assert from_file.train.image_size == (8, 8) and from_module.train.classes == ("0", "1")
    pairs = load_python("user_data_module.py:pairs", name="pairs_set")
    assert (pairs.train.name, len(pairs.train), pairs.test.labels.tolist()) == ("pairs_set", 4, [1, 0])
    for spec, message in [("user_data_module:datasets", "map-style torch Dataset .* got dict"),
                          ("user_data_module:missing", "has no function 'missing'"),
                          ("user_data_module:not_callable", "has no function 'not_callable'"),
                          ("nowhere.py:f", "no such Python file"), ("no colon", "MODULE:FUNCTION"),
                          ("a-b:c", "neither a module name nor a .py file")]:
        with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
            load_dataset("python", spec)
    with pytest.raises(ValueError, match="does not take the options"):
        load_dataset("python", "user_data_module:tensors", threads=2)


# -- the workflow and unlearn() on data given in memory ---------------------------------------------
def test_workflow_on_data_given_in_memory(tmp_path):
    from coun_fast.data.embedded import synthetic
    from coun_fast.train import TrainConfig
    from coun_fast.unlearn import unlearn
    from coun_fast.workflow import evaluate_run, load_run, make_forget_split, run_unlearning, train_original

    made = synthetic(num_classes=3, train_per_class=20, test_per_class=6, image_size=8, seed=0)
    as_torch = [(torch.from_numpy(image).permute(2, 0, 1).float() / 255, int(label))
                for image, label in zip(made.train.images, made.train.labels)]
    splits = DatasetSplits(ImageDataset.from_torch(as_torch, classes=made.train.classes, name="mine", progress=False),
                           ImageDataset.from_arrays(made.test.images, made.test.labels, made.test.classes, name="mine",
                                                    split="test"))
    assert np.array_equal(splits.train.images, made.train.images)
    config = TrainConfig(epochs=1, batch_size=16, lr=0.05, device="cpu", progress=False, augment_backend="cpu")
    original = train_original(splits, "small_cnn", config, tmp_path / "original", model_kwargs={"widths": [8, 16]})
    assert original.record["data"]["dataset"] == "memory" and original.data is splits
    split = make_forget_split(original, "random", ratio=0.2, seed=0)
    ft = run_unlearning("ft", original, split, config, tmp_path / "ft")
    assert {"UA", "RA", "TA", "MIA"} <= set(evaluate_run(ft))
    # From disk the data must be given again, and it is checked against the recorded identity.
    again = load_run(tmp_path / "ft")
    with pytest.raises(ValueError, match="given in memory .* pass the same data again with data="):
        evaluate_run(again)
    assert evaluate_run(again, data=splits)["UA"] == evaluate_run(ft)["UA"]
    other = DatasetSplits(ImageDataset.from_arrays(made.train.images[::-1].copy(), made.train.labels, name="mine"),
                          splits.test)
    with pytest.raises(ValueError, match="made on another data set"):
        evaluate_run(again, data=other)
    with pytest.raises(ValueError, match="made on another data set"):
        make_forget_split(load_run(tmp_path / "original"), "random", ratio=0.2, data=other)
    result = unlearn("ft", original.model, splits.train, split, config)
    assert result.model is not original.model
    with pytest.raises(TypeError, match=r"train must be an ImageDataset; convert a torch Dataset once with "
                                        r"ImageDataset.from_torch"):
        unlearn("ft", original.model, as_torch, split, config)
