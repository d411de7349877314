"""Face repair: the real RetinaFace detector on real photos, the real GFPGAN v1.4 architecture
(spandrel) with random weights, the paste-back geometry, the gfpgan package path, the remote
way through a Gradio app, and every bad input."""
import importlib.util
import io
import os
import socket
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from sdlab.errors import SdlabInputError
from sdlab.faces import (
    FACE_SIZE,
    FFHQ_TEMPLATE,
    WEIGHTS,
    ClassicalRestorer,
    FaceRestorationError,
    NoFaceFoundWarning,
    align_face,
    detect_faces,
    download_weights,
    draw_faces,
    import_gfpgan,
    load_restorer,
    restore_faces,
    restore_remote,
    side_by_side,
)

ASTRONAUT_BOX = (177, 56, 272, 176)  # where RetinaFace finds the face in skimage's astronaut photo


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def two_faces(astronaut):
    """A 480×240 picture with two faces: the astronaut's head, and a smaller mirrored copy."""
    head = astronaut.crop((110, 0, 350, 240))
    canvas = Image.new("RGB", (480, 240), "white")
    canvas.paste(head, (0, 0))
    canvas.paste(head.transpose(Image.FLIP_LEFT_RIGHT).resize((160, 160)), (300, 40))
    return canvas


def random_gfpgan_state_dict():
    """GFPGAN v1.4's architecture (spandrel's class, GFPGANer's settings) with seeded random weights."""
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                 num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    return net.state_dict()


@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory):
    """A weights folder with GFPGANv1.4.pth laid out as the release is ({"params_ema": state dict})."""
    folder = tmp_path_factory.mktemp("weights")
    torch.save({"params_ema": random_gfpgan_state_dict()}, folder / "GFPGANv1.4.pth")
    return folder


@pytest.fixture(scope="module")
def gfpgan_run(weights_folder, two_faces):
    """One run of the whole chain with GFPGAN v1.4 (random weights) on two faces, counting forwards."""
    restorer = load_restorer("GFPGANv1.4", weights_dir=weights_folder, device="cpu")
    batches = []
    hook = restorer.descriptor.model.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    result = restore_faces(two_faces, restorer, upscale=1, weight=1.0)
    hook.remove()
    return restorer, result, batches


def invert(crops):
    """A stand-in restorer that makes every pasted pixel obvious (and costs nothing)."""
    return [255 - crop for crop in crops]


def outside(mask_shape, regions):
    """A boolean mask of the pixels outside every region box."""
    keep = np.ones(mask_shape, bool)
    for left, top, right, bottom in regions:
        keep[top:bottom, left:right] = False
    return keep


# ---- detection and alignment ----------------------------------------------------------------

def test_real_detector_finds_the_astronaut_with_landmarks(astronaut):
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.99
    assert np.allclose(face.box, ASTRONAUT_BOX, atol=4)
    right_eye, left_eye, nose, mouth_r, mouth_l = face.landmarks
    assert right_eye[0] < left_eye[0] and mouth_r[0] < mouth_l[0]  # the person's right is the picture's left
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(mouth_r[1], mouth_l[1])


def test_alignment_moves_the_landmarks_onto_the_ffhq_template(astronaut):
    face = detect_faces(np.asarray(astronaut))[0]
    crop, matrix = align_face(np.asarray(astronaut), face.landmarks)
    assert crop.shape == (FACE_SIZE, FACE_SIZE, 3) and crop.dtype == np.uint8
    moved = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    distances = np.linalg.norm(moved - FFHQ_TEMPLATE, axis=1)  # in pixels of the 512 crop
    assert distances.mean() < 12 and distances.max() < 20  # a similarity cannot fit a smile's 5 points exactly
    (a, minus_b), (b, a_again) = matrix[:, :2]
    assert np.isclose(a, a_again) and np.isclose(minus_b, -b)  # rotation and one scale: no shear, no stretch


# ---- the chain with the real GFPGAN architecture --------------------------------------------

def test_gfpgan_chain_restores_both_faces_in_one_forward(gfpgan_run, two_faces):
    restorer, result, batches = gfpgan_run
    assert restorer.architecture == "GFPGAN" and result.restorer == "GFPGANv1.4"
    assert batches == [2]  # both faces of the picture went through the network together
    assert result.image.size == two_faces.size and result.image.mode == "RGB"
    assert len(result.faces) == 2 and all(f.score > 0.9 for f in result.faces)
    assert [c.size for c in result.aligned + result.restored] == [(FACE_SIZE, FACE_SIZE)] * 4
    assert set(result.seconds) == {"detect", "align", "restore", "paste", "total"}


def test_gfpgan_chain_changes_only_the_face_regions(gfpgan_run, two_faces):
    _, result, _ = gfpgan_run
    before, after = np.asarray(two_faces), np.asarray(result.image)
    keep = outside(before.shape[:2], result.regions)
    assert keep.mean() > 0.3  # the regions are around the faces, not the whole picture
    assert np.array_equal(before[keep], after[keep])
    for face, (left, top, right, bottom) in zip(result.faces, result.regions, strict=True):
        x0, y0, x1, y1 = face.box
        assert left <= x0 and top <= y0 and x1 <= right and y1 <= bottom  # the region covers the face
        inner = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
        assert np.abs(before[inner].astype(int) - after[inner]).mean() > 5  # and the face was replaced


def test_weight_zero_keeps_the_picture_and_upscale_resizes_it(two_faces):
    restorer = invert
    same = restore_faces(two_faces, restorer, weight=0.0)
    assert np.array_equal(np.asarray(same.image), np.asarray(two_faces))
    half = restore_faces(two_faces, restorer, weight=0.5)
    full = restore_faces(two_faces, restorer, weight=1.0)
    before = np.asarray(two_faces).astype(int)
    diff_half = np.abs(np.asarray(half.image).astype(int) - before).sum()
    diff_full = np.abs(np.asarray(full.image).astype(int) - before).sum()
    assert 0.4 < diff_half / diff_full < 0.6

    big = restore_faces(two_faces, restorer, upscale=2, weight=1.0)
    assert big.image.size == (960, 480) and big.upscale == 2
    plain = cv2.resize(np.asarray(two_faces), (960, 480), interpolation=cv2.INTER_LANCZOS4)
    keep = outside((480, 960), big.regions)
    assert np.array_equal(np.asarray(big.image)[keep], plain[keep])
    for face, (left, top, right, bottom) in zip(big.faces, big.regions, strict=True):
        x0, y0, x1, y1 = (2 * v for v in face.box)  # boxes stay in input coordinates
        assert left <= x0 and top <= y0 and x1 <= right and y1 <= bottom


def test_a_restorer_must_give_one_crop_per_face(two_faces):
    with pytest.raises(SdlabInputError, match="must return one 512×512×3 uint8 array per aligned crop"):
        restore_faces(two_faces, lambda crops: [crop[::2, ::2] for crop in crops])
    with pytest.raises(SdlabInputError, match="restorer must be a name"):
        restore_faces(two_faces, 42)


def test_no_face_says_so_and_returns_the_picture_unchanged():
    gradient = np.tile(np.linspace(0, 255, 96).astype(np.uint8)[None, :, None], (64, 1, 3))
    with pytest.warns(NoFaceFoundWarning, match="no face found"):
        result = restore_faces(gradient, invert)
    assert result.faces == [] and result.regions == [] and "no face" in result.summary()
    assert np.array_equal(np.asarray(result.image), gradient)


def test_grey_and_transparent_pictures_are_repaired(astronaut):
    grey = Image.fromarray(data.camera())  # mode "L": the cameraman
    result = restore_faces(grey, invert)
    assert len(result.faces) == 1 and result.image.mode == "RGB"
    rgba = astronaut.resize((256, 256)).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 200))
    result = restore_faces(rgba, invert, upscale=1.5)
    assert result.image.mode == "RGBA" and result.image.size == (384, 384)
    assert np.asarray(result.image)[..., 3].min() == 200  # the transparency is kept


def test_classical_restorer_brings_a_degraded_face_closer_to_the_original_than_a_resize(astronaut):
    """Notebook 06's measurement: the astronaut made small (192 px), noisy and a rough JPEG, then
    repaired back to 512 px. On the face, the classical restorer (its settings chosen on other
    faces) must be closer to the original than a plain Lanczos resize, in PSNR and in SSIM."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    original = np.asarray(astronaut)
    small = np.asarray(astronaut.resize((192, 192), Image.BICUBIC), float)
    noisy = np.clip(small + np.random.default_rng(0).normal(0, 6, small.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "JPEG", quality=25)
    degraded = Image.open(buffer).convert("RGB")
    left, top, right, bottom = (round(v * 512 / 192) for v in detect_faces(np.asarray(degraded))[0].box)

    def closeness(picture):
        assert picture.size == (512, 512)
        mine, truth = np.asarray(picture)[top:bottom, left:right], original[top:bottom, left:right]
        return peak_signal_noise_ratio(truth, mine), structural_similarity(truth, mine, channel_axis=2)

    resize_psnr, resize_ssim = closeness(degraded.resize((512, 512), Image.LANCZOS))
    restorer = ClassicalRestorer()
    for weight in (0.5, 1.0):
        psnr, ssim = closeness(restore_faces(degraded, restorer, upscale=512 / 192, weight=weight).image)
        assert psnr > resize_psnr and ssim > resize_ssim, (f"weight {weight}: PSNR {psnr:.2f} dB, SSIM {ssim:.3f}; "
                                                           f"a plain resize: {resize_psnr:.2f} dB, {resize_ssim:.3f}")


def test_classical_restorer_works_at_the_photos_pixel_size():
    from sdlab.faces.classical import dct_denoise, photo_scale

    photo = Image.fromarray(data.astronaut())
    found = []
    for factor in (1, 2, 4, 8):  # a photo blown up as align_face blows up a small face
        crop = cv2.resize(np.asarray(photo.resize((512 // factor, 512 // factor))), (512, 512))
        found.append(photo_scale(crop))
        assert factor / 2 <= found[-1] <= factor
    assert found == sorted(found)
    channel = np.random.default_rng(0).uniform(0, 255, (37, 53)).astype(np.float32)
    assert np.abs(dct_denoise(channel, threshold=0) - channel).max() < 1e-3  # nothing cut: the picture back
    (restored,) = ClassicalRestorer()([np.asarray(photo)])
    assert restored.shape == (512, 512, 3) and restored.dtype == np.uint8
    with pytest.raises(SdlabInputError, match="RGB uint8 crops"):
        ClassicalRestorer()([np.zeros((512, 512), np.uint8)])


def test_draw_faces_and_side_by_side_return_pictures(astronaut):
    faces = detect_faces(np.asarray(astronaut))
    drawn = np.asarray(draw_faces(astronaut, faces))
    assert drawn.shape == (512, 512, 3) and not np.array_equal(drawn, np.asarray(astronaut))
    assert np.array_equal(drawn[400:], np.asarray(astronaut)[400:])  # only around the face
    row = side_by_side([astronaut, astronaut.resize((128, 64))], ["a", "b"], height=64)
    assert row.height > 64 and row.width >= 128


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("image, message", [
    (Image.new("I;16", (64, 64)), "mode 'I;16'"),
    (np.zeros((64, 64, 3), np.float32), "float32 array"),
    (np.zeros((64, 64, 2), np.uint8), "shape"),
    ("astronaut.png", "PIL.Image.open"),
    (Image.new("RGB", (16, 16)), "at least 32"),
    (Image.new("RGB", (9000, 40)), "larger than 8192"),
])
def test_bad_pictures_are_rejected_with_the_fix(image, message):
    with pytest.raises(SdlabInputError, match=message):
        restore_faces(image, ClassicalRestorer())


@pytest.mark.parametrize("upscale", [0, 0.5, 5, float("nan"), True, "2"])
def test_upscale_out_of_range(astronaut, tmp_path, upscale):
    with pytest.raises(SdlabInputError, match="upscale must be a number from 1 to 4"):
        restore_faces(astronaut, "GFPGANv1.4", upscale=upscale, weights_dir=tmp_path)  # before any loading


@pytest.mark.parametrize("weight", [-0.1, 1.5, None])
def test_weight_out_of_range(astronaut, tmp_path, weight):
    with pytest.raises(SdlabInputError, match="weight must be between 0 and 1"):
        restore_faces(astronaut, "GFPGANv1.4", weight=weight, weights_dir=tmp_path)


def test_upscale_that_makes_the_picture_too_big():
    with pytest.raises(SdlabInputError, match="upscale=4 would make a 16000×160 picture.*upscale <= 2.04"):
        restore_faces(Image.new("RGB", (4000, 40)), ClassicalRestorer(), upscale=4)


def test_missing_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(SdlabInputError) as info:
        load_restorer("GFPGANv1.4", weights_dir=tmp_path)
    message = str(info.value)
    for part in ["GFPGAN architecture", str(tmp_path / "GFPGANv1.4.pth"), "download_weights('GFPGANv1.4')",
                 WEIGHTS["GFPGANv1.4"].url, "classical"]:
        assert part in message
    with pytest.raises(SdlabInputError, match="does not exist"):
        load_restorer(tmp_path / "nothing.pth")


def test_wrong_weights_name_the_architecture_expected(tmp_path):
    from spandrel.architectures.Compact import Compact

    torch.save(Compact(num_feat=8, num_conv=2, upscale=2).state_dict(), tmp_path / "GFPGANv1.4.pth")
    with pytest.raises(SdlabInputError, match="holds a Compact model .* but a GFPGAN face restorer was expected"):
        load_restorer("GFPGANv1.4", weights_dir=tmp_path)
    with pytest.raises(SdlabInputError, match="but a GFPGAN or RestoreFormer face restorer"):
        load_restorer(tmp_path / "GFPGANv1.4.pth")
    (tmp_path / "broken.pth").write_bytes(b"half a download")
    with pytest.raises(SdlabInputError, match="could not be read as a GFPGAN or RestoreFormer weights file"):
        load_restorer(tmp_path / "broken.pth")
    with pytest.raises(SdlabInputError, match="neither one of"):
        load_restorer("GFPGANv9")


def test_download_weights_keeps_the_release_urls(tmp_path, monkeypatch):
    assert WEIGHTS["GFPGANv1.4"].url == "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth"
    assert WEIGHTS["GFPGANv1.3"].url == "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.3.pth"
    assert WEIGHTS["RestoreFormer"].url == ("https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/"
                                            "RestoreFormer.pth")
    calls = []

    def offline(url, dst, progress=True):
        calls.append(url)
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(SdlabInputError, match=f"could not download GFPGANv1.3 .*copy it to {tmp_path}"):
        download_weights("GFPGANv1.3", tmp_path)
    assert calls == [WEIGHTS["GFPGANv1.3"].url]
    (tmp_path / "GFPGANv1.3.pth").write_bytes(b"already here")
    assert download_weights("GFPGANv1.3", tmp_path) == tmp_path / "GFPGANv1.3.pth"
    assert len(calls) == 1  # a file already there is not downloaded again


# ---- the gfpgan package (GFPGANer) -----------------------------------------------------------

def test_missing_gfpgan_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gfpgan", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install --no-build-isolation basicsr gfpgan facexlib"):
        import_gfpgan()


def test_gfpgan_package_backend_reads_one_folder_and_raises_failures(weights_folder, astronaut, tmp_path,
                                                                     monkeypatch):
    if not all(importlib.util.find_spec(name) for name in ("gfpgan", "basicsr", "facexlib")):
        pytest.skip("the gfpgan package path needs: pip install --no-build-isolation basicsr gfpgan facexlib")
    import_gfpgan()  # the torchvision alias makes basicsr importable on torchvision >= 0.17
    with pytest.raises(SdlabInputError, match="detection_Resnet50_Final.pth"):
        load_restorer("GFPGANv1.4", weights_dir=weights_folder, backend="gfpgan")
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.parsenet import ParseNet

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "GFPGANv1.4.pth").symlink_to(weights_folder / "GFPGANv1.4.pth")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.save(RetinaFace(network_name="resnet50", half=False, device="cpu").state_dict(),
                   folder / WEIGHTS["facexlib-detection"].filename)
    torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(),
               folder / WEIGHTS["facexlib-parsing"].filename)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    restorer = load_restorer("GFPGANv1.4", weights_dir=folder, backend="gfpgan", device="cpu")
    assert os.getcwd() == str(workdir) and list(workdir.iterdir()) == []  # nothing written to ./gfpgan/weights

    # GFPGANer's own ResNet-50 detector has random weights here: stand in the real RetinaFace's findings
    def detect_like_facexlib(bgr, threshold):
        found = detect_faces(np.ascontiguousarray(bgr[:, :, ::-1]))
        return np.array([[*f.box, f.score, *f.landmarks.ravel()] for f in found], np.float32).reshape(-1, 15)

    monkeypatch.setattr(restorer.gfpganer.face_helper.face_det, "detect_faces", detect_like_facexlib)
    network = restorer.gfpganer.gfpgan.net  # GFPGANer loaded the v1.4 file into its own GFPGANv1Clean
    assert sum(p.numel() for p in network.parameters()) > 80_000_000
    # its forward is what the spandrel tests above run; here a cheap negative keeps the test fast
    monkeypatch.setattr(network, "forward", lambda x, **kwargs: (-x, []))
    small = astronaut.crop((96, 0, 352, 256))
    result = restore_faces(small, restorer, upscale=2, weight=1.0)
    assert result.image.size == (512, 512) and len(result.faces) == 1 and len(result.restored) == 1
    before = cv2.resize(np.asarray(small), (512, 512), interpolation=cv2.INTER_LANCZOS4)
    keep = outside((512, 512), result.regions)
    assert np.array_equal(np.asarray(result.image)[keep], before[keep])
    assert np.abs(np.asarray(result.image).astype(int)[~keep] - before[~keep]).mean() > 5
    assert np.abs(np.asarray(result.restored[0]).astype(int) + result.aligned[0] - 255).max() <= 1  # negated

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(network, "forward", broken)
    with pytest.raises(FaceRestorationError, match="GFPGAN failed on a face: CUDA out of memory"):
        restore_faces(small, restorer)  # GFPGANer would print "Failed inference" and go on


# ---- the remote way: a Gradio app -------------------------------------------------------------

def test_restore_remote_through_a_gradio_app(two_faces, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    gr = pytest.importorskip("gradio")
    restorer = ClassicalRestorer()

    def repair(image, upscale, weight):
        return restore_faces(image, restorer, upscale=upscale, weight=weight).image

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = gr.Interface(repair, [gr.Image(type="pil"), gr.Number(), gr.Number()],
                       gr.Image(type="pil", format="png"), api_name="restore_faces")  # Gradio's default is webp
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        remote = restore_remote(two_faces, url, upscale=2, weight=0.5)
        local = restore_faces(two_faces, restorer, upscale=2, weight=0.5).image
        assert np.array_equal(np.asarray(remote), np.asarray(local))  # PNG both ways: not a pixel lost
        with pytest.raises(SdlabInputError, match="has no '/nope' endpoint"):
            restore_remote(two_faces, url, api_name="/nope")
        with pytest.raises(SdlabInputError, match="upscale must be"):
            restore_remote(two_faces, url, upscale=8)
    finally:
        app.close()
    with pytest.raises(SdlabInputError, match="could not connect to a Gradio app"):
        restore_remote(two_faces, url)


def test_the_faces_command_checks_its_out_turns_phone_photos_and_keeps_what_it_can(astronaut, tmp_path, capsys):
    from sdlab.cli import main

    photo = astronaut.resize((256, 256))
    sideways = photo.rotate(90, expand=True)  # stored turned, with the EXIF note to turn it back
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn it 90° clockwise to view it
    sideways.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    for out in ("no-extension", "picture.xyz", str(tmp_path)):
        assert main(["faces", str(tmp_path / "phone.jpg"), "--restorer", "classical", "--out", out]) == 2
        assert "is not a picture file name: end it with .png, .jpg or .webp" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoFaceFoundWarning)  # a small photo: only the turning is looked at
        assert main(["faces", str(tmp_path / "phone.jpg"), "--restorer", "classical", "--weight", "0",
                     "--out", str(tmp_path / "upright.png")]) == 0
    upright = np.asarray(Image.open(tmp_path / "upright.png"), int)
    assert upright.shape == (256, 256, 3) and np.abs(upright - np.asarray(photo, int)).mean() < 4  # as viewers show it
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 128))
    rgba.save(tmp_path / "see-through.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoFaceFoundWarning)
        assert main(["faces", str(tmp_path / "see-through.png"), "--restorer", "classical",
                     "--out", str(tmp_path / "flat.jpg")]) == 0
    assert "JPEG keeps no transparency" in capsys.readouterr().out and Image.open(tmp_path / "flat.jpg").mode == "RGB"
    palette = photo.convert("P")
    palette.info["transparency"] = 0  # a palette's transparent colour, not an alpha band
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoFaceFoundWarning)
        kept = restore_faces(palette, "classical", weight=0)
    assert kept.image.mode == "RGBA" and 0 in np.asarray(kept.image.getchannel("A"))
