import socket

import numpy as np
import pytest
from PIL import Image

from bench.data import (
    centre_crop,
    data_dir,
    fetch,
    file_image_info,
    image_spellings,
    load_files,
    load_image,
    load_images,
    read_any_image,
    read_gray,
    resolve_image,
    sha256_of,
)
from bench.errors import BenchError


def test_manifest_has_the_eleven_images_and_four_files_each():
    images = load_images()
    assert list(images) == ["barbara", "boat", "house", "lena", "peppers", "cman", "couple", "fingerprint", "hill", "man", "montage"]
    files = load_files()
    assert len(files) == 44
    for info in images.values():
        for kind in ("GT", "masked", "deep_prior", "papyan"):
            entry = files[(info.stem, kind)]
            assert len(entry.sha256) == 64 and entry.url.endswith("/" + entry.file)
            assert "/eb9ce4fae8917eabdd345b3244a3c53f44595ab8/" in entry.url  # pinned commit


def test_manifest_hashes_match_the_files(data_dir):
    for entry in load_files().values():
        assert sha256_of(data_dir / entry.file) == entry.sha256, entry.file


@pytest.mark.parametrize(
    "name, key",
    [("cman", "cman"), ("Cameraman256", "cman"), ("C.man", "cman"), ("c.man", "cman"), ("cameraman", "cman"),
     ("  LENA ", "lena"), ("lenna", "lena"), ("lena512", "lena"), ("peppers256", "peppers"), ("house256", "house")],
)
def test_resolve_image_by_key_stem_display_name_or_alias(name, key):
    assert resolve_image(name).key == key


def test_unknown_image_lists_the_known_ones():
    with pytest.raises(BenchError, match=r"^unknown image 'parrot'; choose from barbara, boat, .*, montage$"):
        resolve_image("parrot")


@pytest.mark.parametrize("typo, key", [("hous", "house"), ("camerman", "cman"), ("Barbra", "barbara"), ("pepers", "peppers")])
def test_unknown_image_suggests_the_nearest(typo, key):
    with pytest.raises(BenchError, match=rf"^unknown image '{typo}'; did you mean '{key}'\? \(choose from barbara, boat, "):
        resolve_image(typo)


def test_every_spelling_names_one_image():
    spellings = image_spellings(load_images())
    assert spellings["cameraman"] == "cman" and spellings["lenna"] == "lena"


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("DIP_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    assert data_dir(tmp_path / ".") == tmp_path
    with pytest.raises(BenchError, match="does not exist"):
        data_dir(tmp_path / "missing")
    monkeypatch.setenv("DIP_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(BenchError, match=r"\(DIP_DATA_DIR\) does not exist"):
        data_dir()


def test_corrupt_file_in_data_dir_is_rejected(data_dir, tmp_path):
    entry = load_files()[("house", "GT")]
    copy = tmp_path / entry.file
    payload = bytearray((data_dir / entry.file).read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    copy.write_bytes(bytes(payload))
    with pytest.raises(BenchError, match="does not match the manifest"):
        fetch(entry, tmp_path)
    assert copy.read_bytes() == bytes(payload)  # not dip-bench's cache: rejected, never replaced


def test_truncated_file_is_rejected(data_dir, tmp_path):
    entry = load_files()[("house", "GT")]
    (tmp_path / entry.file).write_bytes((data_dir / entry.file).read_bytes()[:1000])
    with pytest.raises(BenchError, match="does not match the manifest"):
        load_image(load_images()["house"], "GT", tmp_path)


def test_unreadable_image_gives_a_clear_error(tmp_path):
    text = tmp_path / "fake.png"
    text.write_text("not a png")
    with pytest.raises(BenchError, match="not a readable image"):
        read_gray(text)


def test_centre_crop_rule():
    array = np.arange(10 * 12).reshape(10, 12)
    crop = centre_crop(array, 4)
    assert crop.shape == (4, 4) and crop[0, 0] == array[3, 4]
    assert centre_crop(array, 0) is array
    with pytest.raises(BenchError, match="larger than the image"):
        centre_crop(array, 11)


@pytest.fixture
def mirror(data_dir, serve):
    """A local HTTP server serving copies of two files, one of them corrupted."""
    payload = bytearray((data_dir / "house_masked.png").read_bytes())
    payload[100] ^= 0x01
    return serve({"house_GT.png": (data_dir / "house_GT.png").read_bytes(), "house_masked.png": bytes(payload)})


def test_missing_file_is_downloaded_and_verified(mirror, tmp_path, data_dir):
    cache = tmp_path / "cache"
    entry = load_files()[("house", "GT")]
    path = fetch(entry, cache)
    assert path == cache / "house_GT.png"
    assert path.read_bytes() == (data_dir / "house_GT.png").read_bytes()
    image = load_image(load_images()["house"], "GT", cache)  # second load: no download, hash re-checked
    assert image.shape == (256, 256) and image.dtype == np.float32


def test_download_with_wrong_hash_is_rejected_and_not_kept(mirror, tmp_path):
    cache = tmp_path / "cache"
    entry = load_files()[("house", "masked")]
    with pytest.raises(BenchError, match="does not match its pinned sha256"):
        fetch(entry, cache)
    assert not (cache / "house_masked.png").exists()


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_a_cache_file_damaged_after_download_is_fetched_again(damage, mirror, tmp_path, data_dir, capsys):
    cache = tmp_path / "cache"
    entry = load_files()[("house", "GT")]
    path = fetch(entry, cache)  # downloaded: the directory is dip-bench's cache from now on
    payload = bytearray(path.read_bytes())
    if damage == "truncate":
        del payload[len(payload) // 2 :]
    else:
        payload[len(payload) // 2] ^= 0xFF
    path.write_bytes(bytes(payload))
    image = load_image(load_images()["house"], "GT", cache)
    assert path.read_bytes() == (data_dir / "house_GT.png").read_bytes()
    assert image.shape == (256, 256)
    assert "(truncated or altered since download); fetching it again" in capsys.readouterr().err


def test_a_damaged_cache_file_whose_new_download_is_also_bad_is_rejected(mirror, tmp_path, data_dir):
    cache = tmp_path / "cache"
    fetch(load_files()[("house", "GT")], cache)  # makes ``cache`` a dip-bench cache
    (cache / "house_masked.png").write_bytes(b"not the file")
    with pytest.raises(BenchError, match="does not match its pinned sha256"):  # the mirror serves a corrupted copy
        fetch(load_files()[("house", "masked")], cache)
    assert not (cache / "house_masked.png").exists()


def test_unreachable_server_gives_a_clear_error(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("DIP_DATA_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(BenchError, match="cannot download house_GT.png"):
        fetch(load_files()[("house", "GT")], tmp_path)


GRAY = (np.arange(64 * 96).reshape(64, 96) % 256).astype(np.uint8)  # (H, W), non-square


@pytest.mark.parametrize(
    "mode, make, expected",
    [
        ("L", lambda: Image.fromarray(GRAY), GRAY / 255.0),
        ("LA", lambda: Image.fromarray(GRAY).convert("LA"), GRAY / 255.0),
        ("I;16", lambda: Image.fromarray(GRAY.astype(np.uint16) * 257), GRAY / 255.0),  # 257 = 65535 / 255
        ("RGB", lambda: Image.fromarray(np.stack([GRAY, 255 - GRAY, GRAY // 2], axis=2)),
         np.stack([GRAY, 255 - GRAY, GRAY // 2], axis=2) / 255.0),
        ("RGBA", lambda: Image.fromarray(np.stack([GRAY, GRAY, GRAY, GRAY], axis=2)), np.stack([GRAY] * 3, axis=2) / 255.0),
        ("P", lambda: Image.fromarray(np.stack([GRAY] * 3, axis=2)).quantize(256, method=Image.Quantize.MEDIANCUT), None),
    ],
)
def test_user_images_of_every_common_mode(mode, make, expected, tmp_path):
    path = tmp_path / f"picture_{mode.replace(';', '')}.png"
    image = make()
    image.save(path)
    assert Image.open(path).mode.startswith(mode[:3] if mode == "I;16" else mode)
    array = read_any_image(path)
    assert array.dtype == np.float32 and array.min() >= 0 and array.max() <= 1
    if expected is None:  # palette: colour, 3 channels
        assert array.shape == (64, 96, 3)
    else:
        np.testing.assert_allclose(array, expected, atol=1e-6)
    info = file_image_info(path, array)
    assert (info.height, info.width) == (64, 96) and info.key.startswith("file-picture")
    assert np.isnan(info.dip_paper)


@pytest.mark.parametrize("content", [b"", b"this is text, not an image", b"\x89PNG\r\n\x1a\n truncated"])
def test_user_files_that_are_not_images(content, tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(content)
    with pytest.raises(BenchError, match="not a readable image"):
        read_any_image(path)


def test_missing_user_file(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        read_any_image(tmp_path / "nowhere.png")
