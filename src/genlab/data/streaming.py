"""Training from chunks written by `make prepare` (LitData's `StreamingDataset`/`StreamingDataLoader`).

    python -m genlab.train model=vae data=streaming data.path=/data/faces-chunks data.image_size=64
    python -m genlab.train model=gpt data=streaming data.path=s3://bucket/book-chunks

The chunks are read a few at a time (from local disk, or downloaded into `data.cache_dir` from
object storage), so memory does not grow with the data set. Under DDP each rank reads its own
share of the chunks (LitData assigns them by rank and worker) and every rank runs as many batches.

Images come out as the image modules give them: `(B, C, H, W)` in [-1, 1] on the grid of
`data.levels`, at `data.image_size` and `data.channels` (decoded, converted and resized per sample
in the loader's workers, exactly as `data=image_folder` does), and int64 labels `(B,)`. Text comes
out as GPT's `(x, y)`, each `(B, block_size)` int64: non-overlapping windows of `block_size + 1`
tokens of a chunk (LitData's `TokensLoader`), in shuffled order. Latents (prepared from a .pt/.npz of an
autoencoder's latents) come out as they were stored, float32 `(B, C, H, W)` with int64 labels `(B,)`:
`data.channels` and `data.image_size` must be their C and H, and they have no `levels` (None).

A run stopped mid-epoch resumes with the next unseen batch: see `StreamingBatches`.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.item_loader import TokensLoader

from genlab import tokenizers
from genlab.data.chunks import IMAGE_SPLITS, META, TEXT_SPLITS, count_samples, read_meta
from genlab.data.image_folder import READ_ERRORS, decode_image, images_in_model_range
from genlab.data.images import EpochPosition, epoch_position
from genlab.errors import ConfigError, DataError
from genlab.tokenizers import Tokenizer

# LitData sizes each worker's share itself, so the length Lightning warns about is right.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


def read_remote_meta(url: str) -> dict[str, Any]:
    """`genlab.json` beside chunks in object storage (s3://bucket/prefix), read with boto3 (LitData's own
    client library): credentials and endpoint come from the usual AWS environment and files."""
    import boto3
    import botocore.exceptions

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    key = f"{prefix.rstrip('/')}/{META}" if prefix else META
    try:
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise DataError(
            f"data.path: cannot read s3://{bucket}/{key} ({err}); upload the whole folder `make prepare` wrote, "
            "and check the AWS credentials"
        ) from None
    return json.loads(body)


class ImageChunks(StreamingDataset):
    """A split of prepared images; a sample is `(image, label)`, the image decoded, converted and
    resized (`decode_image`: uint8 `(C, S, S)`) in the loader's worker; `ImageBatch` makes the batch.
    Indexed with a list of positions it returns the whole batch (as the image modules' datasets do)."""

    def __init__(self, input_dir: str, channels: int, image_size: int, levels: int, **kwargs: Any) -> None:
        super().__init__(input_dir, **kwargs)
        self.channels, self.image_size, self.levels = channels, image_size, levels

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, list):
            return ImageBatch(self.channels, self.image_size, self.levels)([self[i] for i in index])
        item = super().__getitem__(index)
        try:  # bytes(): LitData hands out a view of its read buffer
            image = decode_image(io.BytesIO(bytes(item["image"])), self.channels, self.image_size, self.levels)
        except READ_ERRORS as err:  # prepare decoded every image once: the chunk itself is damaged
            raise DataError(
                f"a sample of {self.input_dir.path or self.input_dir.url} does not decode ({err})"
            ) from None
        return image, int(item["label"])


class ImageBatch:
    """Samples of `ImageChunks` to the image modules' batch: images `(B, C, H, W)` in [-1, 1] (converted
    once per batch), labels `(B,)` int64. A class, so that loader workers can unpickle it."""

    def __init__(self, channels: int, image_size: int, levels: int) -> None:
        self.channels, self.image_size, self.levels = channels, image_size, levels

    def __call__(self, samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = images_in_model_range([image for image, _ in samples], self.channels, self.image_size, self.levels)
        return images, torch.tensor([label for _, label in samples], dtype=torch.long)


class LatentChunks(StreamingDataset):
    """A split of prepared latents; a sample is `(latent (C, H, W) float32, label)`. Indexed with a list of
    positions it returns the whole batch, as `ImageChunks` does."""

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, list):
            return latent_batch([self[i] for i in index])
        item = super().__getitem__(index)
        return item["latent"].float(), int(item["label"])  # float16 chunks train in float32 (AMP casts itself)


def latent_batch(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents `(B, C, H, W)` float32 and labels `(B,)` int64."""
    return torch.stack([x for x, _ in samples]), torch.tensor([label for _, label in samples], dtype=torch.long)


def token_windows(batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of `block_size + 1` tokens to GPT's `(x, y)`, each `(B, block_size)` int64."""
    windows = torch.stack(batch).long()
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


class StreamingBatches(StreamingDataLoader):
    """LitData's loader, resuming exactly where the trainer stopped.

    Its state is made from the fit loop's own progress (`EpochPosition`: the batches trained before
    this epoch, and those of this epoch already trained), in LitData's format, both when Lightning
    saves it into the checkpoint (`state_dict`) and when an epoch's first batch is drawn (`__iter__`,
    after Lightning restored its loops): LitData then replays its shuffle for that epoch and skips
    the trained samples in each worker, so the run continues with the next unseen batch. LitData's
    own counters are not used because they can disagree with the fit loop: its epoch number counts
    its iterators, and a restored position stays in force until an epoch runs to its end (see
    `StreamingDataLoader.__iter__`), which `limit_train_batches` prevents. The epoch's shuffle is
    keyed by `seed` and the number of batches trained before the epoch (as the image samplers key
    theirs), which an unbroken and a resumed run agree on. Outside a Trainer (`position=None`) it is
    LitData's loader as it is.
    """

    def __init__(self, dataset: StreamingDataset, *, position: EpochPosition | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.position = position

    def _state(self, epoch: int, done: int) -> dict[str, Any]:
        """LitData's loader state after `done` batches of the epoch keyed `epoch` (LitData's epochs count
        from 1, so it gets `epoch + 1`)."""
        samples, dataset = done * self.batch_size, self.dataset
        # The dataset writes its state from its own fields (and into its restored state, if any): made
        # here from a clean slate, then the fields are put back, as the running epoch may still use them.
        fields = ("_state_dict", "_elastic_item_lists", "_elastic_drop_first", "current_epoch")
        kept = [getattr(dataset, name) for name in fields]
        dataset._state_dict = dataset._elastic_item_lists = dataset._elastic_drop_first = None
        dataset.current_epoch = epoch + 1
        try:
            dataset_state = dataset.state_dict(samples, self.num_workers, self.batch_size)
        finally:
            for name, value in zip(fields, kept, strict=True):
                setattr(dataset, name, value)
        return {
            "dataset": dataset_state,
            "current_epoch": epoch + 1,
            "num_samples_yielded": samples,
            "latest_worker_idx": (done - 1) % max(1, self.num_workers),  # batches come round-robin from workers
        }

    def state_dict(self) -> dict[str, Any]:
        return self._state(*self.position()) if self.position is not None else super().state_dict()

    def __iter__(self) -> Iterator[Any]:
        # A generator: this runs at the first batch, after Lightning restored its loops (it makes the
        # iterator earlier, e.g. for `estimated_stepping_batches` before a checkpoint is loaded).
        if self.position is not None:
            epoch, done = self.position()
            if done:
                self.load_state_dict(self._state(epoch, done))
            else:  # a fresh epoch: LitData's loader adds one to its epoch and starts its shuffle over
                self.dataset.reset_state_dict()
                self.restore, self.current_epoch = False, epoch
        yield from super().__iter__()


class StreamingDataModule(L.LightningDataModule):
    """Chunks from `make prepare` (a local folder or s3://...), images, latents or text (its `genlab.json` says).

    `batch_size` is per device. One epoch is one pass over this rank's share of the training split.
    Image runs read `image_size`, `channels`, `num_classes` (null: the prepared number of classes) and
    `levels`; latent runs check `channels` and `image_size` against the prepared shape and read
    `num_classes`; text runs read `block_size` and get the prepared tokenizer.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 64,
        num_workers: int = 2,
        seed: int = 0,
        image_size: int = 32,
        channels: int = 3,
        num_classes: int | None = None,
        levels: int | None = 256,
        block_size: int = 128,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not path:
            raise ConfigError("data.path is empty: give the folder `make prepare` wrote (or its s3:// copy)")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1 (samples per device and step), got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be 0 (load in the main process) or more, got {num_workers}")
        if channels < 1:
            raise ConfigError(f"data.channels must be at least 1 (images: 1 or 3), got {channels}")
        if block_size < 1:
            raise ConfigError(f"data.block_size must be at least 1, got {block_size}")
        self.path, self.remote = str(path), str(path).startswith("s3://")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.image_size, self.channels, self.num_classes, self.levels = image_size, channels, num_classes, levels
        self.block_size, self.cache_dir = block_size, cache_dir
        self.meta: dict[str, Any] | None = None
        self.tokenizer: Tokenizer | None = None
        self.splits: dict[str, StreamingDataset] = {}

    def read_meta(self) -> dict[str, Any]:
        """What `make prepare` wrote beside the chunks (read once)."""
        if self.meta is None:
            self.meta = read_remote_meta(self.path) if self.remote else read_meta(self.path)
        return self.meta

    @property
    def kind(self) -> str:
        """ "images", "latents" or "text"."""
        return self.read_meta()["kind"]

    @property
    def vocab_size(self) -> int:
        if self.tokenizer is None:
            raise RuntimeError("StreamingDataModule.vocab_size is known after setup() on text chunks")
        return self.tokenizer.vocab_size

    def _split_dir(self, split: str) -> str:
        return f"{self.path.rstrip('/')}/{split}"

    def _dataset(self, split: str, shuffle: bool) -> StreamingDataset:
        common = {"shuffle": shuffle, "seed": self.seed, "cache_dir": self.cache_dir}
        if self.kind == "text":
            return StreamingDataset(self._split_dir(split), item_loader=TokensLoader(self.block_size + 1), **common)
        if self.kind == "latents":
            return LatentChunks(self._split_dir(split), **common)
        return ImageChunks(self._split_dir(split), self.channels, self.image_size, self.levels, **common)

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            meta = self.read_meta()
            if meta["kind"] == "text":
                self.tokenizer = tokenizers.from_state(meta["tokenizer"])
                for split, count in meta["tokens"].items():
                    if count // (self.block_size + 1) < 1:
                        raise DataError(
                            f"data.block_size={self.block_size} is larger than the {split} split of {self.path} "
                            f"({count} tokens): lower data.block_size"
                        )
            else:
                self._check_shape(meta)
                prepared = int(meta["num_classes"])
                if self.num_classes is None:
                    self.num_classes = prepared
                elif self.num_classes < prepared:
                    raise DataError(
                        f"data.num_classes={self.num_classes} but the chunks in {self.path} hold {prepared} classes: "
                        f"set data.num_classes={prepared} (or null)"
                    )
            names = IMAGE_SPLITS if meta["kind"] != "text" else TEXT_SPLITS
            present = [s for s in names if s == "train" or s in meta.get("samples", meta.get("tokens", {}))]
            self._check_splits(meta, present)
            self.splits = {s: self._dataset(s, shuffle=s == "train") for s in present}
            rank_zero_info(f"Streaming {meta['kind']} from {self.path}: {len(self.splits['train'])} training samples")
        if self.tokenizer is not None and self.trainer is not None and self.trainer.is_global_zero:
            run_dir = Path(self.trainer.default_root_dir)  # the vocabulary goes with the run, as data=text does
            run_dir.mkdir(parents=True, exist_ok=True)
            tokenizers.save(self.tokenizer, run_dir / "tokenizer.json")

    def _check_shape(self, meta: dict[str, Any]) -> None:
        """Images convert to any size and 1 or 3 channels; latents are what they are, and the net is built
        from `data.channels` and `data.image_size` (by interpolation), so those must match them."""
        if meta["kind"] == "images":
            if self.channels not in (1, 3):
                raise ConfigError(f"data.channels must be 1 or 3 for images, got {self.channels}")
            return
        c, h, _ = meta["shape"]
        if (self.channels, self.image_size) != (c, h):
            raise ConfigError(
                f"data.channels={self.channels} data.image_size={self.image_size}, but the latents in {self.path} "
                f"are {c}x{h}x{h}: set data.channels={c} data.image_size={h}"
            )
        self.levels = None  # floats, not an intensity grid

    def _check_splits(self, meta: dict[str, Any], present: list[str]) -> None:
        """Every split the chunks list must hold items: LitData's own refusal of an empty split is a bare
        AssertionError deep in its loader. Local folders are checked on their `index.json`; s3 copies on
        `genlab.json`'s sizes (their index is read by LitData when downloaded)."""
        sizes = meta.get("samples", meta.get("tokens", {}))
        for split in present:
            count = sizes.get(split, 0) if self.remote else count_samples(Path(self._split_dir(split)))
            if not count:
                unit = "tokens" if meta["kind"] == "text" else "samples"
                raise DataError(
                    f"data.path: the {split} split of {self.path} holds no {unit} (chunks from an older or failed "
                    f"`make prepare`, or a {split} fraction that gave nothing): prepare it again into a new folder"
                )

    def _collate(self) -> Callable[[list[Any]], Any]:
        if self.kind == "text":
            return token_windows
        if self.kind == "latents":
            return latent_batch
        return ImageBatch(self.channels, self.image_size, self.levels)

    def _loader(self, dataset: StreamingDataset, position: Callable[[], tuple[int, int]] | None) -> StreamingBatches:
        return StreamingBatches(
            dataset,
            position=position,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self._collate(),
            pin_memory=torch.cuda.is_available(),
            # Its own generator: making an iterator otherwise draws a seed from the global RNG, which would
            # shift the model's noise in a resumed run against an unbroken one.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> StreamingBatches:
        return self._loader(self.splits["train"], epoch_position(self))

    def val_dataloader(self) -> StreamingBatches:
        if "val" not in self.splits:
            raise DataError(f"{self.path} has no val split: prepare it again with --val-fraction above 0")
        return self._loader(self.splits["val"], None)

    def test_dataloader(self) -> StreamingBatches:
        if "test" not in self.splits:
            raise DataError(f"{self.path} has no test split: prepare it again with --test-fraction above 0")
        return self._loader(self.splits["test"], None)
