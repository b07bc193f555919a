"""Unpack an uploaded adapter archive (tar, tar.gz or zip) safely into an empty directory.

An upload is untrusted bytes, so nothing here calls ``extractall``. Each member is checked and
written by hand:

- regular files only: symlinks, hard links, devices and FIFOs are refused;
- names are relative, with no ``..``, no backslash, no leading dot; either flat or all inside one
  top-level folder (what ``tar -cf x.tar lora_dir`` makes); nothing deeper;
- only ``.json`` and ``.safetensors`` files (never a pickle); ``README.md``, which PEFT writes
  beside every adapter, is skipped;
- at most ``MAX_FILES`` files and ``max_bytes`` unpacked in total, counted while reading (the
  sizes an archive declares can lie: zip bombs).

Every refusal is a ``ConfigError`` on field ``file`` that says what to change.
"""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Iterator

from parsona.errors import ConfigError

ALLOWED_SUFFIXES = (".json", ".safetensors")
SKIPPED = frozenset({"README.md"})
MAX_FILES = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20


def bad(problem: str, fix: str = "Upload a tar or zip of a saved PEFT LoRA directory "
        "(adapter_config.json + adapter_model.safetensors).") -> ConfigError:
    return ConfigError("file", fix, problem=problem)


def extract_archive(data: bytes, dest: Path, max_bytes: int) -> list[str]:
    """Unpack ``data`` into the empty directory ``dest``; return the file names written."""
    try:
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return _write_all(_zip_members(archive), dest, max_bytes)
        try:
            archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        except tarfile.TarError:
            raise bad("not a tar, tar.gz or zip archive") from None
        with archive:
            return _write_all(_tar_members(archive), dest, max_bytes)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        # RuntimeError: encrypted zip members; NotImplementedError: unsupported compression
        raise bad(f"the archive is corrupt ({type(exc).__name__}: {exc})") from None


def _tar_members(archive: tarfile.TarFile) -> Iterator[tuple[str, bool, IO[bytes] | None]]:
    for member in archive:
        if member.isdir():
            yield member.name, True, None
        elif member.isreg():
            yield member.name, False, archive.extractfile(member)
        else:
            raise bad(f"{member.name!r} is a link or special file", "Archive regular files only (no symlinks or hard links).")


def _zip_members(archive: zipfile.ZipFile) -> Iterator[tuple[str, bool, IO[bytes] | None]]:
    for info in archive.infolist():
        file_type = (info.external_attr >> 16) & 0o170000  # Unix file type; 0 when the zip tool set none
        if file_type not in (0, 0o100000, 0o040000):            # only regular files and directories
            raise bad(f"{info.filename!r} is a link or special file", "Archive regular files only (no symlinks).")
        yield info.filename, info.is_dir(), None if info.is_dir() else archive.open(info)


def _write_all(members, dest: Path, max_bytes: int) -> list[str]:
    written: list[str] = []
    top: str | None = None
    total = 0
    for raw_name, is_dir, stream in members:
        parts = _parts(raw_name)
        if is_dir:
            if len(parts) > 1:
                raise bad(f"{raw_name!r} is nested too deep", "Put the files at the top of the archive or in one folder.")
            continue
        if len(parts) == 2:
            if top not in (None, parts[0]) or (top is None and written):
                raise bad(f"{raw_name!r} is outside the archive's one folder", "Put all files in one folder.")
            top = parts[0]
        elif len(parts) == 1:
            if top is not None:
                raise bad(f"{raw_name!r} is outside the archive's one folder", "Put all files in one folder.")
        else:
            raise bad(f"{raw_name!r} is nested too deep", "Put the files at the top of the archive or in one folder.")
        name = parts[-1]
        if name in SKIPPED:
            continue
        if not name.endswith(ALLOWED_SUFFIXES) or not _NAME.fullmatch(name):
            raise bad(f"{raw_name!r} is not allowed", "Upload only .json and .safetensors files with plain names "
                      "(pickled .bin weights are refused: save with safetensors).")
        if name in written:
            raise bad(f"{name!r} appears twice")
        if len(written) == MAX_FILES:
            raise bad(f"more than {MAX_FILES} files")
        with open(dest / name, "xb") as out:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise bad(f"it unpacks to more than {max_bytes} bytes", "Upload a smaller adapter.")
                out.write(chunk)
        written.append(name)
    if not written:
        raise bad("the archive holds no .json or .safetensors file")
    return written


def _parts(name: str) -> list[str]:
    """The path parts of a member name, or an error if it could point outside the target."""
    if not name or "\\" in name or "\0" in name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise bad(f"unsafe member name {name!r}", "Use relative paths inside the archive.")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or p.startswith(".") for p in parts):
        raise bad(f"unsafe member name {name!r}", "Use relative paths without '..' or hidden files.")
    return parts
