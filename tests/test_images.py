import os

import numpy as np
import pytest
from PIL import Image

from embedsearch.sources.images import ImageLoadError, load_image

# EXIF orientation → the transpose that undoes it (TIFF/EXIF spec), written out here independently of Pillow's helper
UNDO = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90}


def _quadrants(w=8, h=4):
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 0)
    return Image.fromarray(a)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    img = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.png", exif=exif)
    got = np.asarray(load_image(tmp_path / "o.png"))
    want = np.asarray(img.transpose(UNDO[orientation]))
    assert got.shape == want.shape and (got == want).all()


def test_broken_exif_is_ignored(tmp_path):
    _quadrants().save(tmp_path / "b.jpg", quality=95)
    data = bytearray((tmp_path / "b.jpg").read_bytes())
    app1 = b"\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\xff\xff"  # an EXIF block pointing nowhere
    (tmp_path / "b.jpg").write_bytes(bytes(data[:2]) + app1 + bytes(data[2:]))
    assert load_image(tmp_path / "b.jpg").size == (8, 4)


def test_alpha_is_composited_over_white(tmp_path):
    a = np.zeros((2, 2, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 255)  # opaque red; the rest fully transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    got = np.asarray(load_image(tmp_path / "a.png"))
    assert tuple(got[0, 0]) == (255, 0, 0) and tuple(got[1, 1]) == (255, 255, 255)
    Image.fromarray(a[..., [0, 3]], "LA").save(tmp_path / "la.png")
    assert tuple(np.asarray(load_image(tmp_path / "la.png"))[1, 1]) == (255, 255, 255)
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    got = np.asarray(load_image(tmp_path / "p.png"))
    assert tuple(got[0, 0]) == (255, 255, 255) and tuple(got[0, 1]) == (10, 20, 30)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    got = np.asarray(load_image(tmp_path / "g16.png"))[0, :, 0]
    assert got.tolist() == [0, 128, 255]


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "I", "F", "RGB"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    img = Image.new(mode, (3, 2))
    fmt = "TIFF" if mode in ("CMYK", "I", "F") else "PNG"
    path = tmp_path / f"m.{fmt.lower()}"
    img.save(path, format=fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (3, 2)


@pytest.mark.parametrize("size", [(1, 1), (1, 10000), (10000, 1)])
def test_extreme_shapes_embed(tmp_path, size):
    from embedsearch.models.backbones import create_backbone

    Image.new("RGB", size, (9, 9, 9)).save(tmp_path / "x.png")
    bb = create_backbone("pixels:4")
    assert bb.embed(bb.preprocess(load_image(tmp_path / "x.png"))[None]).shape == (1, 48)


def _stage(fn):
    with pytest.raises(ImageLoadError) as e:
        fn()
    return e.value.stage, e.value.kind


def test_bad_paths_are_refused_with_a_reason(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "outside.png")
    (root / "escape.png").symlink_to(tmp_path / "outside.png")
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "dir.jpg").mkdir()
    os.mkfifo(root / "fifo.jpg")  # must not block
    assert _stage(lambda: load_image(root / "missing.jpg", root)) == ("path", "FileNotFoundError")
    assert load_image(root / "escape.png", root).size == (2, 2)  # links are followed: the folder is the user's (#29)
    assert _stage(lambda: load_image(root / ".." / "outside.png", root)) == ("path", "OutsideRoot")
    assert _stage(lambda: load_image(root / "loop.png", root)) == ("path", "SymlinkLoop")
    assert _stage(lambda: load_image(root / "dir.jpg", root)) == ("path", "NotAFile")
    assert _stage(lambda: load_image(root / "fifo.jpg", root)) == ("path", "NotAFile")


def test_bad_files_are_refused_with_a_reason(tmp_path, monkeypatch):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "fake.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    _quadrants(64, 64).save(tmp_path / "t.png")
    (tmp_path / "trunc.png").write_bytes((tmp_path / "t.png").read_bytes()[:60])
    _quadrants(64, 64).save(tmp_path / "t.jpg", quality=90)
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "t.jpg").read_bytes()[:300])
    assert _stage(lambda: load_image(tmp_path / "empty.jpg")) == ("decode", "EmptyFile")
    assert _stage(lambda: load_image(tmp_path / "text.jpg")) == ("decode", "UnidentifiedImage")
    assert _stage(lambda: load_image(tmp_path / "fake.jpg")) == ("decode", "UnidentifiedImage")  # EPS never opened
    assert _stage(lambda: load_image(tmp_path / "trunc.png"))[0] == "decode"
    assert _stage(lambda: load_image(tmp_path / "trunc.jpg"))[0] == "decode"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert _stage(lambda: load_image(tmp_path / "t.png")) == ("decode", "DecompressionBomb")


def test_animated_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(load_image(tmp_path / "a.gif"))[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("stage", ["load", "preprocess"])
def test_a_stop_signal_during_one_image_stops_the_run_instead_of_failing_the_image(image_folder, monkeypatch, stage):
    """SIGTERM arrives as cli._Terminated (SIGINT as KeyboardInterrupt) wherever the main thread is; inside the
    per-image error handling it must propagate, not be recorded as a bad image (it was, and the run exited 0)."""
    from embedsearch.build.engines import local
    from embedsearch.cli import _Terminated
    from embedsearch.sources.datasets import open_source

    src = open_source(str(image_folder))

    def stop(*a, **k):
        raise _Terminated

    if stage == "load":  # inside the decoder, under load_image's own catch-all for plugin bugs
        monkeypatch.setattr("embedsearch.sources.images.ImageOps.exif_transpose", stop)
        monkeypatch.setattr("embedsearch.sources.images.to_rgb", stop)
        items = local._Items(src.records[:2], src.root, lambda img: img)
    else:
        items = local._Items(src.records[:2], src.root, stop)
    with pytest.raises(_Terminated):
        items[0]
