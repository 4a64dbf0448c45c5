"""The one image feeder: decode -> batch -> model, for training features, evaluation and prediction.

Images are decoded by lib.data.images in a small thread pool a bounded way ahead of the model
(Pillow releases the GIL while decoding), into fixed-shape uint8 batches whose last one is padded,
so a model's graph is traced once. A file that can't be decoded becomes an ImageError carrying its
path: reported per item, or raised, as the caller asks. No TensorFlow here: the model is any
callable from a uint8 batch to an array.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib import settings
from lib.data import images
from lib.errors import ImageError

Source = str | Path | bytes | bytearray
ModelFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Batch:
    """Up to `batch` decoded images: pixels[:count] belong to items (indices into the sources)."""

    items: np.ndarray
    pixels: np.ndarray  # (batch, S, S, 3) uint8; rows of failed items and padding are zeros
    errors: dict[int, ImageError] = field(default_factory=dict)  # source index -> why it failed

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def ok(self) -> np.ndarray:
        """Which items decoded (a boolean mask in item order)."""
        return np.asarray([int(i) not in self.errors for i in self.items], dtype=bool)


def _name(source: Source, names: Sequence[str] | None, index: int) -> str:
    if names is not None:
        return str(names[index])
    return "uploaded image" if isinstance(source, (bytes, bytearray)) else str(source)


def decode_one(source: Source, size: int, *, name: str, max_pixels: int | None = None) -> np.ndarray:
    """decode() that only ever raises ImageError naming the file (never a traceback for a user's file)."""
    try:
        return images.decode(source, size, max_pixels=max_pixels or settings.max_pixels())
    except ImageError as exc:
        raise exc.with_path(name) from exc
    except MemoryError as exc:
        raise ImageError("The image is too large to open with the memory available.", name) from exc
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop a batch
        raise ImageError(f"The file cannot be read as an image ({type(exc).__name__}).", name) from exc


class Feeder:
    """Decodes sources to size x size RGB and hands them to a model in fixed-size batches."""

    def __init__(
        self,
        size: int,
        *,
        batch: int = 32,
        workers: int | None = None,
        ahead_mb: int = 256,
        max_pixels: int | None = None,
    ):
        self.size = int(size)
        self.batch = int(batch)
        self.workers = workers or max(2, min(8, os.cpu_count() or 2))
        # Decoding may run far ahead (while TensorFlow starts, say) but within a memory budget.
        self.ahead = max(2, ahead_mb * 2**20 // (self.batch * self.size * self.size * 3))
        self.max_pixels = max_pixels

    def decode_many(
        self, sources: Sequence[Source], items: Sequence[int], pool: ThreadPoolExecutor, names=None
    ) -> Batch:
        """Decode the given items now (in `pool`) into one padded batch."""
        items = np.asarray(items, dtype=np.int64)
        out = np.zeros((self.batch, self.size, self.size, 3), dtype=np.uint8)
        errors: dict[int, ImageError] = {}

        def load(i: int) -> np.ndarray | ImageError:
            try:
                return decode_one(
                    sources[i], self.size, name=_name(sources[i], names, i), max_pixels=self.max_pixels
                )
            except ImageError as exc:
                return exc

        for row, (i, value) in enumerate(zip(items, pool.map(load, items.tolist()), strict=True)):
            if isinstance(value, ImageError):
                errors[int(i)] = value
            else:
                out[row] = value
        return Batch(items=items, pixels=out, errors=errors)

    def batches(
        self,
        sources: Sequence[Source],
        *,
        groups: Sequence[Sequence[int]] | None = None,
        names: Sequence[str] | None = None,
        on_error: str = "skip",
    ) -> Stream:
        """Batches of the sources in order (or group by group: a batch never mixes two groups),
        decoded in background threads a bounded way ahead, starting now. on_error="raise" raises
        the first ImageError (with its path) instead of reporting it in Batch.errors. Close the
        stream (or use it in a with block) when not reading it to the end."""
        if groups is None:
            groups = [range(len(sources))]
        jobs = [
            np.asarray(list(group)[i : i + self.batch], dtype=np.int64)
            for group in groups
            for i in range(0, len(group), self.batch)
        ]
        return Stream(self, sources, jobs, names, on_error)

    def run(
        self,
        sources: Sequence[Source],
        model: ModelFn,
        *,
        names: Sequence[str] | None = None,
        on_error: str = "skip",
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, dict[int, ImageError]]:
        """The model's output for every source (rows of failed items are NaN) and the failures."""
        outputs: np.ndarray | None = None
        errors: dict[int, ImageError] = {}
        done = 0
        with self.batches(sources, names=names, on_error=on_error) as stream:
            for batch in stream:
                out = np.asarray(model(batch.pixels))[: batch.count]
                if outputs is None:
                    outputs = np.full((len(sources), *out.shape[1:]), np.nan, dtype=np.float32)
                outputs[batch.items] = out
                for i in batch.errors:
                    outputs[i] = np.nan
                errors.update(batch.errors)
                done += batch.count
                if progress is not None:
                    progress(done, len(sources))
        if outputs is None:
            outputs = np.zeros((0, 0), dtype=np.float32)
        return outputs, errors


class Stream:
    """Batches decoded by a background thread into a bounded queue (see Feeder.batches)."""

    def __init__(self, feeder: Feeder, sources, jobs: list[np.ndarray], names, on_error: str):
        self.on_error = on_error
        self._done = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=feeder.ahead)

        def produce() -> None:
            try:
                with ThreadPoolExecutor(max_workers=feeder.workers) as pool:
                    for job in jobs:
                        if self._done.is_set() or not self._put(
                            feeder.decode_many(sources, job, pool, names)
                        ):
                            return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                self._put(exc)
                return
            self._put(None)

        self._thread = threading.Thread(target=produce, name="feeder", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._done.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:  # the model is busy; look for a stop request now and then
                continue
        return False

    def __iter__(self) -> Iterator[Batch]:
        try:
            while True:
                value = self._queue.get()
                if value is None:
                    return
                if isinstance(value, BaseException):
                    raise value
                if self.on_error == "raise" and value.errors:
                    raise next(iter(value.errors.values()))
                yield value
        finally:
            self.close()

    def close(self) -> None:
        """Stop decoding (the thread ends within a fraction of a second)."""
        self._done.set()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
