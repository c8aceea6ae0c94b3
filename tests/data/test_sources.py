import gzip
import hashlib
import shutil
import zipfile
from pathlib import Path

import polars as pl
import pytest

from components.config import AmazonSource, ColumnNames, DataConfig, FilesSource, SyntheticSource
from components.data import DataError, fetch_raw, load_raw, movielens

FIXTURES = Path(__file__).parent / "fixtures"

# One small table pair, written below in every supported format with the user's own column names.
ITEMS = pl.DataFrame(
    {
        "movie": [10, 2, 7],
        "name": ["Heat", "Alien", None],
        "genre": [["Crime", "Drama"], ["Sci-Fi"], ["Comedy"]],
    }
)
EVENTS = pl.DataFrame(
    {
        "uid": [5, 5, 3, 5],
        "movie": [10, 2, 2, 7],
        "ts": [300, 100, 200, 100],
        "stars": [4.0, 5.0, None, 3.0],
    }
)
COLUMNS = ColumnNames(user_id="uid", item_id="movie", timestamp="ts", rating="stars")


def _write(df: pl.DataFrame, path: Path, fmt: str) -> None:
    if fmt in ("csv", "tsv"):  # text formats: lists become one '/'-joined string
        flat = df.with_columns(
            [pl.col(c).list.join("/") for c, t in df.schema.items() if isinstance(t, pl.List)]
        )
        flat.write_csv(path, separator="\t" if fmt == "tsv" else ",")
    elif fmt == "parquet":
        df.write_parquet(path)
    else:
        df.write_ndjson(path)


def _files_cfg(tmp_path: Path, fmt: str, **overrides: object) -> DataConfig:
    ext = {"csv": "csv", "tsv": "tsv", "parquet": "parquet", "jsonl": "jsonl"}[fmt]
    items, events = tmp_path / f"movies.{ext}", tmp_path / f"events.{ext}"
    _write(ITEMS, items, fmt)
    _write(EVENTS, events, fmt)
    files = FilesSource(
        interactions=str(events),
        items=str(items),
        columns=COLUMNS,
        text_columns=["name", "genre"],
        title_column="name",
        **overrides,
    )
    return DataConfig(source="files", files=files)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_files_source_maps_renamed_columns(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "in").mkdir()
    cfg = _files_cfg(tmp_path / "in", fmt)
    raw_dir = tmp_path / "raw"
    written = fetch_raw(cfg, raw_dir)
    assert sorted(p.name for p in written) == sorted(p.name for p in raw_dir.iterdir())
    raw = load_raw(cfg, raw_dir)

    assert raw.items.schema == pl.Schema({"item_id": pl.Utf8, "title": pl.Utf8, "text": pl.Utf8})
    assert raw.items.get_column("item_id").to_list() == ["10", "2", "7"]  # file order kept
    assert raw.items.get_column("title").to_list() == ["Heat", "Alien", "7"]  # untitled -> id
    genre = "Crime/Drama" if fmt in ("csv", "tsv") else "Crime, Drama"
    assert raw.items.get_column("text").to_list() == [
        f"Heat | genre: {genre}",
        "Alien | genre: Sci-Fi",
        "genre: Comedy",
    ]
    assert raw.interactions.schema == pl.Schema(
        {"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, "rating": pl.Float64}
    )
    assert raw.interactions.rows() == [
        ("5", "10", 300, 4.0),
        ("5", "2", 100, 5.0),
        ("3", "2", 200, None),
        ("5", "7", 100, 3.0),
    ]
    assert raw.interactions_file.endswith(f"events.{fmt}")


def test_gzipped_csv_and_explicit_format(tmp_path: Path) -> None:
    events = tmp_path / "events.data"
    events.write_bytes(gzip.compress(b"user_id,item_id,timestamp\nu1,i1,5\n"))
    items = tmp_path / "items.data"
    items.write_text("item_id,title\ni1,One\n")
    cfg = DataConfig(
        source="files",
        files=FilesSource(interactions=str(events), items=str(items), format="csv"),
    )
    fetch_raw(cfg, tmp_path / "raw")
    raw = load_raw(cfg, tmp_path / "raw")
    assert raw.interactions.rows() == [("u1", "i1", 5, None)]  # default 'rating' is optional
    assert raw.items.rows() == [("i1", "One", "One")]


def test_date_string_timestamps_and_leading_zero_ids(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(
        "user_id,item_id,timestamp\n007,0042,2020-01-02T00:00:00\n007,0042,2020-01-01 12:00:00\n"
    )
    (tmp_path / "items.csv").write_text("item_id,title\n0042,X\n")
    cfg = DataConfig(
        source="files",
        files=FilesSource(interactions=str(events), items=str(tmp_path / "items.csv")),
    )
    fetch_raw(cfg, tmp_path / "raw")
    raw = load_raw(cfg, tmp_path / "raw")
    assert raw.interactions.rows() == [
        ("007", "0042", 1577923200, None),
        ("007", "0042", 1577880000, None),
    ]

    events.write_text("user_id,item_id,timestamp\nu,i,2020-01-02\nu,i,yesterday\n")
    with pytest.raises(DataError) as err:
        fetch_raw(cfg, tmp_path / "raw")  # unreadable: the previous snapshot stays
    assert str(err.value) == (
        f"{events}: column 'timestamp': cannot parse as a timestamp (epoch seconds or a date) "
        "(1 rows), e.g. rows [1]: values ['yesterday']; the dates in a column must share one "
        "format, like row 0: '2020-01-02'"
    )
    assert load_raw(cfg, tmp_path / "raw").interactions.height == 2


def test_missing_column_names_file_column_and_available(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    cfg = _files_cfg(tmp_path / "in", "csv")
    columns = COLUMNS.model_copy(update={"user_id": "user"})
    cfg = cfg.model_copy(update={"files": cfg.files.model_copy(update={"columns": columns})})
    with pytest.raises(DataError) as err:
        fetch_raw(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    message = str(err.value)
    assert "events.csv: column 'user' not found" in message
    assert "data.files.columns.user_id" in message and "['uid', 'movie', 'ts', 'stars']" in message


def test_explicit_rating_column_must_exist(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    cfg = _files_cfg(tmp_path / "in", "csv")
    columns = COLUMNS.model_copy(update={"rating": "score"})
    cfg = cfg.model_copy(update={"files": cfg.files.model_copy(update={"columns": columns})})
    with pytest.raises(DataError, match=r"events\.csv: column 'score' not found"):
        fetch_raw(cfg, tmp_path / "raw")


def test_unparsable_values_are_quoted_with_rows(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp,rating\nu,i,1,5\nu,i,2,five\n")
    (tmp_path / "items.csv").write_text("item_id,title\ni,I\n")
    cfg = DataConfig(
        source="files",
        files=FilesSource(
            interactions=str(tmp_path / "events.csv"), items=str(tmp_path / "items.csv")
        ),
    )
    with pytest.raises(DataError) as err:
        fetch_raw(cfg, tmp_path / "raw")
    assert str(err.value) == (
        f"{tmp_path / 'events.csv'}: column 'rating': cannot parse as a number (1 rows), "
        "e.g. rows [1]: values ['five']"
    )


def test_missing_or_unset_input_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    cfg = DataConfig(source="files", files=FilesSource(interactions=str(missing), items="x.csv"))
    with pytest.raises(DataError, match=r"data\.files\.interactions: file not found: .*nope\.csv"):
        fetch_raw(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()  # nothing half-written
    with pytest.raises(DataError, match=r"data\.amazon\.reviews is not set"):
        fetch_raw(DataConfig(source="amazon", amazon=AmazonSource()), tmp_path / "raw")


def test_failed_fetch_keeps_previous_snapshot(tmp_path: Path) -> None:
    cfg = DataConfig(source="synthetic", synthetic=SyntheticSource(n_users=5, n_items=10))
    fetch_raw(cfg, tmp_path / "raw")
    before = (tmp_path / "raw" / "interactions.csv").read_bytes()
    broken = DataConfig(source="files", files=FilesSource(interactions=str(tmp_path / "no.csv")))
    with pytest.raises(DataError):
        fetch_raw(broken, tmp_path / "raw")
    assert (tmp_path / "raw" / "interactions.csv").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


@pytest.mark.parametrize("metadata", ["meta_2014.jsonl", "meta_2018.jsonl"])
@pytest.mark.parametrize("gzipped", [True, False])
def test_amazon_reviews_and_metadata(tmp_path: Path, metadata: str, gzipped: bool) -> None:
    reviews = FIXTURES / "reviews_5core.jsonl.gz"
    if not gzipped:
        reviews = tmp_path / "reviews_5core.json"
        reviews.write_bytes(gzip.decompress((FIXTURES / "reviews_5core.jsonl.gz").read_bytes()))
    cfg = DataConfig(
        source="amazon",
        amazon=AmazonSource(reviews=str(reviews), metadata=str(FIXTURES / metadata)),
    )
    fetch_raw(cfg, tmp_path / "raw")
    raw = load_raw(cfg, tmp_path / "raw")

    assert raw.interactions.height == 9
    assert raw.interactions.row(0) == ("A2XVJBSRI3SWDI", "B0001", 1360540800, 5.0)
    assert raw.interactions.row(7) == ("A3RQXJN9ZQ7QVM", "B0004", 1262390400, 4.0)
    # Only reviewed items, first record of each, in metadata order.
    assert raw.items.get_column("item_id").to_list() == ["B0001", "B0002", "B0003", "B0004"]
    titles = raw.items.get_column("title").to_list()
    assert titles == ["Rose Water Toner", "Argan Hair Oil", "B0003", "Kabuki Brush"]
    texts = dict(zip(raw.items.get_column("item_id"), raw.items.get_column("text"), strict=True))
    if metadata == "meta_2014.jsonl":
        assert texts["B0001"] == (
            "Rose Water Toner | categories: Beauty, Skin Care, Face, Fragrance"
            " | description: A gentle toner. It's alcohol-free."
        )
        assert (
            texts["B0002"]
            == "Argan Hair Oil | brand: Moroccan Gold | categories: Beauty, Hair Care"
        )
    else:
        assert texts["B0001"] == (
            "Rose Water Toner | brand: Heritage | categories: All Beauty, Skin Care"
            " | description: A gentle toner. Alcohol-free."
        )
        assert texts["B0002"] == "Argan Hair Oil | brand: Moroccan Gold"
    assert texts["B0003"].startswith("categories: ")
    assert raw.items_file == str(FIXTURES / metadata)


def test_amazon_bad_metadata_line(tmp_path: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text("{'asin': 'B0001', 'title': 'ok'}\n\nnot a record\n")
    cfg = DataConfig(
        source="amazon",
        amazon=AmazonSource(reviews=str(FIXTURES / "reviews_5core.jsonl.gz"), metadata=str(meta)),
    )
    with pytest.raises(DataError, match=r"meta\.json: line 3: neither a JSON object"):
        fetch_raw(cfg, tmp_path / "raw")


# --- MovieLens-100k (RecBole atomic files) ------------------------------------------------

ML_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n"
    "186\t10\t4.5\t891717742\n"
)
ML_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1996\tComedy\n"
    "10\tMisérables, Les\t1995\tDrama Musical\n"
    "267\tunkonwn\tunkonwn\tunknown\n"
    '300\t"Air Bud"\t\tChildren\'s Comedy\n'
)


def test_movielens_format_parsing(tmp_path: Path) -> None:
    (tmp_path / "ml-100k.inter").write_text(ML_INTER, encoding="utf-8")
    (tmp_path / "ml-100k.item").write_text(ML_ITEM, encoding="utf-8")
    raw = load_raw(DataConfig(source="movielens100k"), tmp_path)
    assert raw.interactions.rows() == [
        ("196", "242", 881250949, 3.0),
        ("186", "10", 891717742, 4.5),
    ]
    assert raw.items.rows() == [
        ("242", "Kolya", "Kolya (1996) | genres: Comedy"),
        ("10", "Misérables, Les", "Misérables, Les (1995) | genres: Drama, Musical"),
        ("267", "unkonwn", "unkonwn | genres: unknown"),
        ("300", '"Air Bud"', '"Air Bud" | genres: Children\'s, Comedy'),
    ]
    assert raw.items_file == str(tmp_path / "ml-100k.item")


def _fake_wheel(path: Path, inter: bytes, item: bytes) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{movielens.MEMBER_DIR}/ml-100k.inter", inter)
        archive.writestr(f"{movielens.MEMBER_DIR}/ml-100k.item", item)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_mismatch_is_an_error(tmp_path: Path) -> None:
    data = ML_INTER.encode()
    movielens.check_sha256(data, hashlib.sha256(data).hexdigest(), "x")
    with pytest.raises(
        DataError, match=r"tampered\.inter: sha256 mismatch \(expected 0+, got [0-9a-f]{64}\)"
    ):
        movielens.check_sha256(data + b"1\t1\t1\t1\n", "0" * 64, "tampered.inter")


def test_tampered_download_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIIT_CACHE_DIR", str(tmp_path / "cache"))

    def fake_download(requirement: str, dest: Path) -> None:
        _fake_wheel(dest / movielens.WHEEL_NAME, b"tampered", b"tampered")

    monkeypatch.setattr(movielens, "pip_download", fake_download)
    with pytest.raises(
        DataError, match=r"recbole-1\.2\.1-py3-none-any\.whl \(downloaded\): sha256 mismatch"
    ):
        fetch_raw(DataConfig(source="movielens100k"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    assert not (tmp_path / "cache" / movielens.WHEEL_NAME).exists()


def test_wheel_members_are_verified_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the hashes pointed at a fake wheel: happy path, cache reuse, tampered member."""
    monkeypatch.setenv("SIIT_CACHE_DIR", str(tmp_path / "cache"))
    inter, item = ML_INTER.encode(), ML_ITEM.encode()
    wheel_sha = _fake_wheel(tmp_path / "fake.whl", inter, item)
    downloads: list[str] = []

    def fake_download(requirement: str, dest: Path) -> None:
        downloads.append(requirement)
        shutil.copyfile(tmp_path / "fake.whl", dest / movielens.WHEEL_NAME)

    monkeypatch.setattr(movielens, "pip_download", fake_download)
    monkeypatch.setattr(movielens, "WHEEL_SHA256", wheel_sha)
    monkeypatch.setattr(
        movielens,
        "FILE_SHA256",
        {
            "ml-100k.inter": hashlib.sha256(inter).hexdigest(),
            "ml-100k.item": hashlib.sha256(item).hexdigest(),
        },
    )
    cfg = DataConfig(source="movielens100k")
    written = fetch_raw(cfg, tmp_path / "raw")
    assert [p.name for p in written] == ["ml-100k.inter", "ml-100k.item"]
    assert (tmp_path / "raw" / "ml-100k.item").read_bytes() == item
    fetch_raw(cfg, tmp_path / "raw2")
    assert downloads == ["recbole==1.2.1"]  # the second fetch used the cache

    monkeypatch.setitem(movielens.FILE_SHA256, "ml-100k.item", "f" * 64)
    with pytest.raises(DataError, match=r"ml-100k/ml-100k\.item: sha256 mismatch"):
        fetch_raw(cfg, tmp_path / "raw3")
    assert not (tmp_path / "raw3").exists()


def test_synthetic_source_roundtrip(tmp_path: Path) -> None:
    cfg = DataConfig(source="synthetic", synthetic=SyntheticSource(n_users=8, n_items=12, seed=3))
    written = fetch_raw(cfg, tmp_path / "raw")
    assert [p.name for p in written] == ["items.csv", "interactions.csv"]
    raw = load_raw(cfg, tmp_path / "raw")
    assert raw.items.height == 12
    assert raw.interactions.get_column("user_id").n_unique() == 8
    assert raw.interactions.get_column("rating").null_count() == raw.interactions.height


@pytest.mark.slow
def test_movielens_download_end_to_end(tmp_path: Path) -> None:
    """Needs PyPI (or a warm cache): the real wheel, checksums and parse."""
    cfg = DataConfig(source="movielens100k")
    fetch_raw(cfg, tmp_path / "raw")
    raw = load_raw(cfg, tmp_path / "raw")
    assert raw.items.height == 1682
    assert raw.interactions.height == 100_000
    assert raw.interactions.get_column("user_id").n_unique() == 943
    assert raw.items.row(0) == (
        "1",
        "Toy Story",
        "Toy Story (1995) | genres: Animation, Children's, Comedy",
    )


def test_spreadsheet_extension_is_named(tmp_path: Path) -> None:
    (tmp_path / "events.xlsx").write_bytes(b"PK\x03\x04")
    (tmp_path / "items.csv").write_text("item_id,title\ni,I\n")
    cfg = DataConfig(
        source="files",
        files=FilesSource(
            interactions=str(tmp_path / "events.xlsx"), items=str(tmp_path / "items.csv")
        ),
    )
    with pytest.raises(DataError) as err:
        fetch_raw(cfg, tmp_path / "raw")
    assert str(err.value) == (
        f"{tmp_path / 'events.xlsx'}: spreadsheets are not read: export the sheet as 'CSV UTF-8'"
    )
    assert not (tmp_path / "raw").exists()
