"""Where datasets come from: the bundled sample, an uploaded zip (unpacked safely), a folder on the
server (check_folder), and the classic cats-vs-dogs download."""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from lib import files, settings
from lib.data.layouts import check_folder, dataset_root
from lib.errors import UserError
from lib.text import size_text
from lib.vocab import is_archive_name

CATS_DOGS_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"


CATS_DOGS_FNAME = "cats_and_dogs_filtered.zip"


def sample_dataset_dir() -> Path:
    """The bundled sample (a downsized copy of the bean-leaf dataset, MIT licensed)."""
    return settings.sample_dir()


@contextlib.contextmanager
def _binary(source: bytes | bytearray | memoryview | str | Path | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        with open(source, "rb") as fh:
            yield fh
    else:
        yield source


def zip_entry_count(
    source: bytes | bytearray | memoryview | str | Path | BinaryIO, stop_after: int
) -> tuple[int, bool]:
    """(entries a zip's central directory lists, whether that is the exact count), read from its raw
    records without building anything per entry, so a limit can be checked before zipfile parses
    the directory (it builds a ZipInfo for every entry first: a 48 MB upload listing a million empty
    folders held a process for 38 s and 200 MB before any limit was looked at). The end record's
    count is trusted only to refuse; otherwise the records are walked, stopping once past
    `stop_after` (then the count is not exact). (0, True) when there is no end record: zipfile then
    says the file is damaged. Files and folders both count."""
    with _binary(source) as fp:
        fp.seek(0, os.SEEK_END)
        size = fp.tell()
        tail_len = min(size, 22 + 0xFFFF)  # the end record and its comment
        fp.seek(size - tail_len)
        tail = fp.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return 0, True
        declared, cd_size = struct.unpack("<HI", tail[at + 10 : at + 16])
        end = size - tail_len + at  # the central directory ends here (or where the zip64 record starts)
        if at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07" and end >= 76:
            fp.seek(end - 76)
            z64 = fp.read(56)
            if z64[:4] == b"PK\x06\x06":
                declared, cd_size = struct.unpack("<QQ", z64[32:48])
                end -= 76
        if declared > stop_after:
            return declared, True
        if cd_size > end:
            return 0, True
        fp.seek(end - cd_size)
        left, buf, pos, count = cd_size, b"", 0, 0
        while count <= stop_after:
            if len(buf) - pos < 46:
                more = fp.read(max(0, min(left, 1 << 20)))
                left -= len(more)
                buf, pos = buf[pos:] + more, 0
                if len(buf) < 46:
                    break
            if buf[pos : pos + 4] != b"PK\x01\x02":
                break
            n, m, k = struct.unpack_from("<3H", buf, pos + 28)  # name, extra field, comment lengths
            pos += 46 + n + m + k
            count += 1
            if pos > len(buf):  # a long name or field runs past what was read: skip over the rest
                fp.seek(pos - len(buf), os.SEEK_CUR)
                left -= pos - len(buf)
                buf, pos = b"", 0
        return count, count <= stop_after


def _zip_member_name(info: zipfile.ZipInfo) -> str | None:
    """The member's safe relative name, None for entries to skip, or UserError for unsafe ones."""
    name = info.filename.replace("\\", "/")
    if "\x00" in name:
        raise UserError("The zip has a file name with a NUL character: it is not safe to unpack.")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UserError(f"The zip has an absolute path ({info.filename}): it is not safe to unpack.")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise UserError(
            f"The zip has a path that leaves its folder ({info.filename}): it is not safe to unpack."
        )
    if not parts or parts[0] == "__MACOSX":
        return None
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UserError(f"The zip contains a symbolic link ({info.filename}), which is not allowed.")
    if info.flag_bits & 0x1:
        raise UserError(
            f"The zip is password-protected ({info.filename}): zip the images without a password."
        )
    if not info.is_dir() and is_archive_name(parts[-1]):
        raise UserError(
            f"The zip contains another archive ({info.filename}): unpack it and zip the images directly."
        )
    return "/".join(parts)


def extract_zip(
    data: bytes | str | Path | BinaryIO,
    dest_dir: str | Path,
    *,
    max_files: int = 100_000,
    max_bytes: int = 5 * 1024**3,
    room: int | None = None,
) -> Path:
    """Safely unpack an uploaded zip into dest_dir and return the dataset root inside it.

    Rejects paths leaving the folder, absolute paths, symlinks, nested archives, encryption, more
    than max_files entries (files and folders), more than max_bytes unpacked bytes or more than
    `room` (what the visitor's workspace may still hold), counted while writing so a lying header
    cannot bomb the disk, and a zip the disk has no room for. Skips __MACOSX. Unpacks into a
    temporary sibling folder renamed into place at the end, so an existing dest_dir is a complete
    earlier extraction and is reused.
    """
    dest_dir = Path(dest_dir)
    if dest_dir.is_dir() and any(dest_dir.iterdir()):
        return dataset_root(dest_dir)
    source: Any = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        count, exact = zip_entry_count(source, max_files)
    except OSError as exc:
        raise UserError(f"The zip cannot be read ({exc.strerror or exc}).") from exc
    if count > max_files:  # folders count too: a million empty folders is a bomb as well
        held = f"{count:,}" if exact else f"more than {max_files:,}"
        raise UserError(f"The zip holds {held} files and folders; the limit is {max_files:,}.")
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError("This is not a zip file (or it is damaged): upload a .zip of image folders.") from exc
    try:
        with archive, files.atomic_dir(dest_dir) as tmp:
            _unpack(archive, tmp, max_files=max_files, max_bytes=max_bytes, room=room)
    except UserError:
        raise
    except OSError as exc:  # its text names this server's folders: the reason alone
        raise UserError(f"The zip could not be unpacked ({exc.strerror or type(exc).__name__}).") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, RuntimeError, ValueError) as exc:
        raise UserError(f"The zip could not be unpacked ({exc}).") from exc
    return dataset_root(dest_dir)


def _too_big(size: int, max_bytes: int, room: int | None, *, more: bool = False) -> UserError:
    amount = f"more than {size_text(size)}" if more else size_text(size)
    if room is not None and room < max_bytes:
        return UserError(
            f"Unpacked, this zip takes {amount}, more than the {size_text(room)} left in your workspace "
            "on this demo: delete old runs or uploads."
        )
    return UserError(f"The zip unpacks to {amount}; the limit is {max_bytes / 1e6:,.0f} MB.")


def _check_names(members: list[tuple[zipfile.ZipInfo, str]]) -> None:
    """Refuse two files with one name (zip tools differ on which copy wins, so what was checked need
    not be what is unpacked) and a file where a folder must be."""
    kinds: dict[str, bool] = {}  # name -> is a folder
    for info, name in members:
        folder = info.is_dir()
        if name in kinds and not (folder and kinds[name]):
            raise UserError(f"The zip holds two entries named {name}: it is not safe to unpack.")
        kinds[name] = folder
    for name in kinds:
        parts = name.split("/")
        for k in range(1, len(parts)):
            parent = "/".join(parts[:k])
            if kinds.get(parent) is False:
                raise UserError(
                    f"The zip has a file and a folder both named {parent}: it is not safe to unpack."
                )


def _unpack(
    archive: zipfile.ZipFile, tmp: Path, *, max_files: int, max_bytes: int, room: int | None = None
) -> None:
    """Write the zip's members under tmp, refusing anything unsafe or over the limits."""
    entries = archive.infolist()
    if len(entries) > max_files:  # folders count too: a million empty folders is a bomb as well
        raise UserError(f"The zip holds {len(entries):,} files and folders; the limit is {max_files:,}.")
    members = [(info, _zip_member_name(info)) for info in entries]
    members = [(i, n) for i, n in members if n is not None]
    _check_names(members)
    found = [(i, n) for i, n in members if not i.is_dir()]
    if not found:
        raise UserError("The zip is empty: it should hold one folder of images per class.")
    limit = max_bytes if room is None else min(max_bytes, room)
    declared = sum(i.file_size for i, _ in found)
    if declared > limit:
        raise _too_big(declared, max_bytes, room)
    # Room on the disk for what the zip says it holds (each entry also takes a block or so).
    files.ensure_free(tmp, declared + 4096 * len(members), "unpacking the zip")
    base = tmp.resolve()
    written = 0
    for info, name in members:
        target = (tmp / name).resolve()
        if base != target and base not in target.parents:
            raise UserError(f"The zip has a path that leaves its folder ({info.filename}).")
        try:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > limit:
                        raise _too_big(limit, max_bytes, room, more=True)
                    out.write(chunk)
        except OSError as exc:  # the member's name, never this server's folder
            shown = name if len(name) <= 80 else name[:77] + "..."
            raise UserError(
                f"The zip could not be unpacked: {shown} can't be written here ({exc.strerror or exc})."
            ) from exc


def _find_train_validation(folder: Path) -> Path | None:
    """The folder (folder itself or up to two levels down) holding train/ and validation/."""
    candidates = [folder, *sorted(p for p in folder.glob("*") if p.is_dir())]
    candidates += sorted(p for p in folder.glob("*/*") if p.is_dir())
    for c in candidates:
        if (c / "train").is_dir() and (c / "validation").is_dir():
            return c
    return None


def download_cats_vs_dogs(cache_dir: str | Path, origin: str = CATS_DOGS_URL) -> Path:
    """Download (once) and unpack the classic cats-vs-dogs dataset; returns the folder with train/ and validation/.

    keras.utils.get_file with extract=True (Keras 3) saves the zip as <cache_dir>/datasets/<fname>
    and unpacks it into <cache_dir>/datasets/cats_and_dogs_filtered_extracted/, re-extracting on
    every call, so an existing extraction is looked for first.
    """
    cache_dir = Path(cache_dir).expanduser().absolute()
    datasets_dir = cache_dir / "datasets"
    extracted = datasets_dir / (CATS_DOGS_FNAME.split(".", 1)[0] + "_extracted")
    if extracted.is_dir() and (found := _find_train_validation(extracted)):
        return found
    try:
        datasets_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot write the download folder {datasets_dir} ({exc.strerror or exc}).") from exc
    import keras

    try:
        result = keras.utils.get_file(
            fname=CATS_DOGS_FNAME,
            origin=origin,
            extract=True,
            cache_dir=str(cache_dir),
            cache_subdir="datasets",
        )
    except Exception as exc:  # urllib errors arrive wrapped in a bare Exception by Keras
        raise UserError(
            f"Could not download the cats-vs-dogs dataset from {origin}: no network connection? ({exc})"
        ) from exc
    found = _find_train_validation(Path(result))
    if found is None:
        # A bad download (an HTML error page, say) would otherwise be reused forever by get_file.
        (datasets_dir / CATS_DOGS_FNAME).unlink(missing_ok=True)
        raise UserError(
            f"The file downloaded from {origin} is not the cats-vs-dogs zip (no train/ and validation/ folders)."
        )
    return found


def open_upload(data: bytes, dest_dir: str | Path, *, room: int | None = None) -> Path:
    """An uploaded zip unpacked into dest_dir (its dataset root), within this server's limits on
    upload size, file count and unpacked size, and within `room`: the bytes the visitor's workspace
    may still take (None: no quota)."""
    limit = settings.max_upload_mb() * 1024 * 1024
    if len(data) > limit:
        raise UserError(
            f"This zip is {len(data) / 1e6:,.0f} MB; the limit here is {settings.max_upload_mb()} MB."
        )
    return extract_zip(
        data,
        dest_dir,
        max_files=settings.max_zip_files(),
        max_bytes=settings.max_zip_mb() * 1024 * 1024,
        room=room,
    )


SOURCES = {
    "sample": "Bundled sample (bean leaves)",
    "zip": "Upload a zip",
    "folder": "Folder on the server",
    "download": "Cats vs dogs (download)",
}


def source_choices() -> list[str]:
    """Where datasets may come from on this server (no server folders on a hosted demo)."""
    return [k for k in SOURCES if k != "folder" or settings.allow_server_folders()]


__all__ = [
    "check_folder",
    "download_cats_vs_dogs",
    "extract_zip",
    "open_upload",
    "sample_dataset_dir",
    "source_choices",
    "zip_entry_count",
]
