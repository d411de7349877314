"""Face repair: detect faces → align each to the FFHQ template → restore (GFPGAN) → paste back.

    from sdlab.faces import load_restorer, restore_faces
    restorer = load_restorer("GFPGANv1.4")          # once: ~350 MB of weights (download_weights)
    result = restore_faces(image, restorer, upscale=2, weight=0.8)
    result.image, result.faces, result.summary()

One module per step of the chain:
`detection` (RetinaFace, 5 landmarks) · `alignment` (similarity transform to the FFHQ 512
template, and back under a feathered mask) · `restorers` (GFPGAN / RestoreFormer through
spandrel) · `classical` (the offline restorer, no model: denoise + sharpen) · `weights` (the
released files) · `repair` (the chain) · `gfpgan_package` (the original GFPGANer, as the GFPGAN
demo runs it) · `remote` (a Gradio app that repairs faces) · `display` (boxes, landmarks, side by
side) · `images` (input checks).
"""
from .alignment import FACE_SIZE, FFHQ_TEMPLATE, align_face, alignment_matrix, feather_mask, paste_face
from .classical import ClassicalRestorer
from .detection import LANDMARK_NAMES, Face, detect_faces
from .display import draw_faces, show_faces, show_photo, show_side_by_side, side_by_side
from .gfpgan_package import FaceRestorationError, import_gfpgan
from .remote import restore_remote
from .repair import FaceRestoration, NoFaceFoundWarning, restore_faces
from .restorers import RESTORERS, SpandrelRestorer, load_restorer
from .weights import WEIGHTS, download_weights, weights_dir, weights_path

__all__ = [
    "FACE_SIZE", "FFHQ_TEMPLATE", "LANDMARK_NAMES", "RESTORERS", "WEIGHTS",
    "ClassicalRestorer", "Face", "FaceRestoration", "FaceRestorationError", "NoFaceFoundWarning",
    "SpandrelRestorer", "align_face", "alignment_matrix", "detect_faces", "download_weights", "draw_faces",
    "feather_mask", "import_gfpgan", "load_restorer", "paste_face", "restore_faces", "restore_remote",
    "show_faces", "show_photo", "show_side_by_side", "side_by_side", "weights_dir", "weights_path",
]
