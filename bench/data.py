"""The 11 Table 1 images: manifest, data directory, download by pinned URL, sha256 checks, loading.

The images are not redistributed: `datasets/files.tsv` pins each file's public URL and sha256, and a
missing file is fetched with pooch into the data directory. Every load re-checks the hash, so a
truncated or altered file is never used: in a directory dip-bench downloaded into (it leaves a
``.dip-bench-cache`` marker there) a bad file is fetched again; in any other directory (a shared copy
the user pointed at) it is rejected and left untouched.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.errors import BenchError, closest, unknown_choice

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS_DIR = REPO_ROOT / "datasets"
DEFAULT_DATA_DIR = DATASETS_DIR / "cache"
FILE_KINDS = ("GT", "masked", "deep_prior", "papyan")
CACHE_MARKER = ".dip-bench-cache"  # in a data directory, says dip-bench owns (downloaded) its files


@dataclass(frozen=True)
class ImageInfo:
    key: str  # short name used on the command line and in record file names
    stem: str  # file stem of the published files
    name: str  # display name in Table 1
    width: int
    height: int
    papyan: float  # Table 1, Papyan et al. (dB)
    dip_paper: float  # Table 1, Deep Image Prior (dB)
    seed_repro: float  # Peschl et al.'s reproduction (dB)
    aliases: tuple[str, ...] = ()  # other names the image goes by (cameraman, lenna), for the command line


@dataclass(frozen=True)
class FileEntry:
    file: str
    stem: str
    kind: str
    sha256: str
    url: str


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def load_images() -> dict[str, ImageInfo]:
    """The 11 images of Table 1, in the table's order, keyed by short name."""
    infos = {}
    for row in _read_tsv(DATASETS_DIR / "images.tsv"):
        infos[row["key"]] = ImageInfo(
            key=row["key"],
            stem=row["stem"],
            name=row["name"],
            width=int(row["width"]),
            height=int(row["height"]),
            papyan=float(row["papyan"]),
            dip_paper=float(row["dip_paper"]),
            seed_repro=float(row["seed_repro"]),
            aliases=tuple(a.strip() for a in row.get("aliases", "").split(",") if a.strip()),
        )
    return infos


def load_files() -> dict[tuple[str, str], FileEntry]:
    """File manifest keyed by (stem, kind)."""
    return {(r["stem"], r["kind"]): FileEntry(**r) for r in _read_tsv(DATASETS_DIR / "files.tsv")}


def _spelling(name: str) -> str:
    """Case, spaces and punctuation dropped: "C.man" and "c man" are "cman"."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def image_spellings(images: dict[str, ImageInfo]) -> dict[str, str]:
    """{spelling: key} for every name an image answers to: key, file stem, display name, aliases, each
    also with its size appended (house256, barbara512), as the images are often called."""
    spellings: dict[str, str] = {}
    for info in images.values():
        for name in (info.key, info.stem, info.name, *info.aliases):
            for spelling in (_spelling(name), _spelling(name) + str(info.width)):
                if spellings.setdefault(spelling, info.key) != info.key:
                    raise ValueError(f"images.tsv: {spelling!r} names both {spellings[spelling]} and {info.key}")
    return spellings


def resolve_image(name: str, images: dict[str, ImageInfo] | None = None) -> ImageInfo:
    """Look an image up by key, file stem, display name or alias, ignoring case and punctuation;
    an unknown name fails with the nearest known one suggested."""
    images = images or load_images()
    spellings = image_spellings(images)
    wanted = _spelling(name)
    if wanted in spellings:
        return images[spellings[wanted]]
    raise BenchError(unknown_choice("unknown image", name.strip(), images, hint=closest(wanted, spellings)))


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $DIP_DATA_DIR, else the git-ignored datasets/cache (created on first download).

    A directory named explicitly must exist: a typo should not silently start a download elsewhere.
    """
    chosen = explicit or os.environ.get("DIP_DATA_DIR")
    if not chosen:
        return DEFAULT_DATA_DIR
    path = Path(chosen).expanduser()
    if not path.is_dir():
        source = "--data-dir" if explicit else "DIP_DATA_DIR"
        raise BenchError(f"data directory {path} ({source}) does not exist")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_url(entry: FileEntry) -> str:
    """The pinned URL, or the same file name under $DIP_DATA_URL (a mirror) when that is set."""
    mirror = os.environ.get("DIP_DATA_URL")
    return f"{mirror.rstrip('/')}/{entry.file}" if mirror else entry.url


def fetch(entry: FileEntry, directory: Path) -> Path:
    """Path of a verified copy of ``entry`` in ``directory``, downloading it first if it is missing."""
    path = directory / entry.file
    if not path.exists():
        _download(entry, directory)
    actual = sha256_of(path)
    if actual != entry.sha256 and (directory / CACHE_MARKER).exists():
        # Truncated or altered since the download: ours to replace. The fresh copy is checked again below.
        print(f"{path}: sha256 does not match the manifest (truncated or altered since download); fetching it again",
              file=sys.stderr)
        path.unlink()
        _download(entry, directory)
        actual = sha256_of(path)
    if actual != entry.sha256:
        raise BenchError(
            f"{path}: sha256 {actual[:16]}... does not match the manifest's {entry.sha256[:16]}... "
            f"(corrupt or not the pinned file); delete it to download it again"
        )
    return path


def _download(entry: FileEntry, directory: Path) -> None:
    import pooch  # imported here: only a missing file needs it

    url = file_url(entry)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"{entry.file} is missing and the data directory {directory} cannot be created: {exc.strerror}") from None
    try:
        (directory / CACHE_MARKER).touch()  # also the write test: os.access says yes to root on a read-only mount
    except OSError as exc:
        raise BenchError(f"{entry.file} is missing from {directory}, which is not writable ({exc.strerror}); set --data-dir") from None
    pooch.get_logger().setLevel("WARNING")  # its handler holds the stderr of import time; say it ourselves
    print(f"downloading {entry.file} from {url}", file=sys.stderr)
    try:
        pooch.retrieve(url, known_hash=f"sha256:{entry.sha256}", fname=entry.file, path=directory, progressbar=False)
    except ValueError as exc:  # pooch's hash mismatch: it has already deleted the download
        if "hash" not in str(exc).lower():
            raise
        raise BenchError(f"download of {entry.file} from {url} does not match its pinned sha256; file rejected") from None
    except Exception as exc:  # network errors come as requests/OSError subclasses
        raise BenchError(f"cannot download {entry.file} from {url}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def read_gray(path: Path) -> np.ndarray:
    """An 8-bit grayscale image as float32 (H, W) in [0, 1]."""
    try:
        with Image.open(path) as image:
            if image.mode != "L":
                raise BenchError(f"{path}: expected an 8-bit grayscale (mode L) image, got mode {image.mode}")
            return np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise BenchError(f"{path}: not a readable image ({type(exc).__name__})") from None


def read_any_image(path: Path) -> np.ndarray:
    """A user's image file as float32 in [0, 1]: (H, W) for grayscale modes, (H, W, 3) for colour.

    Grayscale: 1, L, LA (alpha dropped), I;16 and I (16-bit, divided by 65535). Colour: RGB, RGBA
    (alpha dropped), P (palette), CMYK, YCbCr, converted to RGB.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("1", "L", "LA"):
                return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
            if mode.startswith("I;16") or mode == "I":
                array = np.asarray(image, dtype=np.float64)
                if array.min() < 0 or array.max() > 65535:
                    raise BenchError(f"{path}: mode {mode} values outside 0..65535")
                return (array / 65535.0).astype(np.float32)
            if mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
                return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BenchError(f"{path}: not a readable image ({type(exc).__name__})") from None
    raise BenchError(f"{path}: image mode {mode} is not supported; use an 8/16-bit grayscale or RGB PNG/JPEG")


def file_image_info(path: Path, array: np.ndarray) -> ImageInfo:
    """An :class:`ImageInfo` for a file outside the manifest: no Table 1 values (NaN)."""
    slug = re.sub(r"[^a-z0-9]+", "-", Path(path).stem.lower()).strip("-") or "image"
    height, width = array.shape[:2]
    nan = math.nan
    return ImageInfo(key=f"file-{slug}", stem=str(path), name=Path(path).name, width=width, height=height,
                     papyan=nan, dip_paper=nan, seed_repro=nan)


def load_image(info: ImageInfo, kind: str, directory: Path) -> np.ndarray:
    """A verified image of the given kind ("GT", "masked", "deep_prior", "papyan") as float32 (H, W)."""
    entry = load_files()[(info.stem, kind)]
    array = read_gray(fetch(entry, directory))
    if array.shape != (info.height, info.width):
        raise BenchError(f"{entry.file}: size {array.shape[1]}x{array.shape[0]}, manifest says {info.width}x{info.height}")
    return array


def centre_crop(array: np.ndarray, size: int) -> np.ndarray:
    """The centred size x size window (offsets rounded down); size 0 means the whole image."""
    if size == 0:
        return array
    height, width = array.shape[:2]
    if size > min(height, width):
        raise BenchError(f"crop {size} is larger than the image ({width}x{height})")
    top, left = (height - size) // 2, (width - size) // 2
    return array[top : top + size, left : left + size]
