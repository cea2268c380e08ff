"""One medical image reader: PNG / JPEG / WebP (8 and 16 bit), DICOM and NIfTI, from a path or bytes.

    >>> scan = read_medical_image("scan.dcm", options=ReadOptions(window="lung"))
    >>> scan.image            # RGB PIL image, 8-bit, as every model entry point takes it
    >>> scan.metadata         # technical facts only (size, modality, slice, window, vetted DICOM tags)

The CLI, the HTTP API, the web page's previews and the corpus adapters read through this module
(and `intensity.py`'s display rules), so a scan looks the same wherever it enters. DICOM: the
modality LUT (CT in HU), then the caller's window, else the file's own VOI window, else the
modality's rule; MONOCHROME1 inverted; a multi-frame file gives one frame (the middle by default).
NIfTI: reoriented to the closest canonical (RAS) orientation, one slice along an axis (axial by
default, the middle one), rotated for display. No identifier leaves: DICOM metadata is the vetted
allowlist of `dicom_tags.py`, NIfTI header text is never read. Sizes are checked from headers
before any pixel data is decoded (decompression bombs). Torch-free (the corpus builder imports it).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from unimedvl.errors import InputError
from unimedvl.imaging.dicom_tags import technical_tags
from unimedvl.imaging.intensity import DEFAULT_CT_WINDOW, Window, grey_to_uint8, resolve_window, stretch_percentiles

Source = Union[str, Path, bytes]

DEFAULT_MAX_IMAGE_PIXELS = 20_000_000  # the reference refuses images above 20 MP
DEFAULT_MAX_BYTES = 512 * 1024 * 1024  # a file (or a decompressed NIfTI) above this is refused
MAX_VOLUME_VOXELS = 256 * 1024 * 1024  # 1 GiB of float32: a damaged header or a bomb, not a scan
DICOM_MODALITY = {"CT": "ct", "MR": "mri", "US": "ultrasound", "CR": "chest_xray", "DX": "chest_xray",
                  "OCT": "oct", "OP": "fundus", "SM": "histopathology", "ES": "endoscopy", "MG": "mammography"}
FORMATS = ("png", "jpeg", "webp", "dicom", "nifti")
MEDIA_TYPES = {"dicom": "application/dicom", "nifti": "application/x-nifti"}  # data-URL types (and image/*)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class ReadOptions:
    """How to turn a scan into one picture. `slice_index`: a NIfTI slice or a DICOM frame (default: middle);
    `axis`: NIfTI slicing axis after canonical reorientation (2 = axial); `window`: a CT preset or
    (center, width), overriding the file's own; `modality`: overrides the file's (e.g. "ct" for a NIfTI CT)."""

    window: Window | None = None
    slice_index: int | None = None
    axis: int = 2
    modality: str | None = None

    def __post_init__(self) -> None:
        if self.window is not None:
            try:
                resolve_window(self.window)
            except ValueError as exc:
                raise InputError(str(exc)) from None
        if self.slice_index is not None and (isinstance(self.slice_index, bool) or not isinstance(self.slice_index, int)
                                             or self.slice_index < 0):
            raise InputError(f"slice must be a non-negative integer, got {self.slice_index!r}")
        if self.axis not in (0, 1, 2):
            raise InputError(f"axis must be 0, 1 or 2, got {self.axis!r}")


@dataclass
class MedicalImage:
    """An 8-bit RGB picture of the input plus technical metadata (never identifiers)."""

    image: Image.Image
    format: str
    modality: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def detect_format(head: bytes, name: str = "") -> str:
    """The format of a file from its first bytes (and, for NIfTI, gzip and its name)."""
    lower = name.lower()
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00":
        return "nifti"
    if head[:2] == b"\x1f\x8b":  # gzip: the only compressed format read is .nii.gz
        return "nifti"
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(DICOM_SUFFIXES):  # DICOM without its 128-byte preamble
        return "dicom"
    return "other"


def _read_bytes(source: Source, max_bytes: int) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise InputError(f"image: {len(data):,} bytes is more than the {max_bytes:,} accepted")
        return data, "image"
    path = Path(source)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"{path}: {size:,} bytes is more than the {max_bytes:,} accepted")
    return path.read_bytes(), str(path)


def read_medical_image(source: Source, *, options: ReadOptions | None = None, name: str = "",
                       format: str | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                       max_bytes: int = DEFAULT_MAX_BYTES) -> MedicalImage:
    """Read any supported file (path or bytes) as one 8-bit RGB picture. InputError names the problem.

    `format` ("dicom", "nifti", ...) is a hint from the sender (a data URL's media type) used when the
    bytes do not say (DICOM without its preamble); `name` labels errors and helps detection."""
    options = options or ReadOptions()
    data, label = _read_bytes(source, max_bytes)
    label = name or label
    if not data:
        raise InputError(f"{label}: empty file")
    fmt = detect_format(data[:512], name or (label if not isinstance(source, bytes) else ""))
    if fmt == "other" and format in ("dicom", "nifti"):
        fmt = format
    if fmt == "dicom":
        return _read_dicom(data, label, options, max_pixels)
    if fmt == "nifti":
        return _read_nifti(data, label, options, max_pixels, max_bytes)
    return _read_picture(data, label, options, max_pixels)


# ---------------------------------------------------------------- PNG / JPEG / WebP
def picture_to_rgb(image: Image.Image, modality: str | None = None, window_: Window | None = None) -> Image.Image:
    """An opened picture as 8-bit RGB: alpha over white, 16-bit / float greys by the display rule."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = grey_to_uint8(np.asarray(image, dtype=np.float32), modality, window_)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


def _read_picture(data: bytes, label: str, options: ReadOptions, max_pixels: int) -> MedicalImage:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            w, h = opened.size
            if w * h > max_pixels:
                raise InputError(f"{label}: {w}x{h} image has more than {max_pixels:,} pixels")
            if w < 1 or h < 1:
                raise InputError(f"{label}: empty image")
            opened.load()  # truncated files raise here (PIL's LOAD_TRUNCATED_IMAGES stays off)
            fmt, mode = (opened.format or "other").lower(), opened.mode
            image = picture_to_rgb(opened, options.modality, options.window)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{label}: image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"{label}: cannot read image ({exc})") from None
    bits = 16 if mode.startswith("I;16") else (32 if mode in ("I", "F") else 8)
    return MedicalImage(image, fmt, options.modality, {"width": w, "height": h, "bits": bits, "mode": mode})


# ---------------------------------------------------------------- DICOM
def dicom_display(ds: Any, frame: np.ndarray, modality: str, window_: Window | None = None) -> np.ndarray:
    """One DICOM frame -> uint8 `[H, W]` (or `[H, W, 3]` for colour): modality LUT, window, MONOCHROME1."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if frame.ndim == 3 and frame.shape[-1] == 3:  # colour (ultrasound, photos)
        return frame.astype(np.uint8) if frame.dtype == np.uint8 else stretch_percentiles(frame, 0, 100)
    values = apply_modality_lut(frame, ds).astype(np.float32)
    if modality == "ct" or window_ is not None:
        out = grey_to_uint8(values, "ct", window_)
    elif modality == "mri":
        out = grey_to_uint8(values, "mri")
    else:
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds).astype(np.float32)
        out = grey_to_uint8(values, modality)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        out = 255 - out
    return out


def _file_window(ds: Any) -> tuple[float, float] | None:
    """The file's own first VOI window (WindowCenter / WindowWidth), if it holds a usable one."""
    try:
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is None or width is None:
            return None
        center = float(center[0] if hasattr(center, "__len__") and not isinstance(center, str) else center)
        width = float(width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width)
        return resolve_window((center, width))
    except (TypeError, ValueError, IndexError):
        return None


def _read_dicom(data: bytes, label: str, options: ReadOptions, max_pixels: int) -> MedicalImage:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # noqa: BLE001  (pydicom raises many types for damaged files)
        raise InputError(f"{label}: not a readable DICOM file ({type(exc).__name__})") from None
    if "PixelData" not in ds:
        raise InputError(f"{label}: DICOM file holds no image (no PixelData)")
    if rows < 1 or columns < 1 or frames < 1:
        raise InputError(f"{label}: DICOM header gives an empty image ({rows}x{columns}, {frames} frames)")
    if rows * columns > max_pixels or rows * columns * frames > MAX_VOLUME_VOXELS:
        raise InputError(f"{label}: {columns}x{rows} x {frames} frames is more than this reader accepts "
                         f"({max_pixels:,} pixels per frame)")
    tags, withheld = technical_tags(ds)
    if tags.get("BurnedInAnnotation") == "YES":
        raise InputError(f"{label}: BurnedInAnnotation is YES (text in the pixels may identify the patient); "
                         "refused")
    modality = options.modality or DICOM_MODALITY.get(tags.get("Modality", ""), "other")
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{label}: DICOM pixel data cannot be decoded ({type(exc).__name__})") from None
    multi = frames > 1 and pixels.ndim >= 3 and pixels.shape[0] == frames
    count = pixels.shape[0] if multi else 1
    index = count // 2 if options.slice_index is None else options.slice_index
    if index >= count:
        raise InputError(f"{label}: frame {index} requested, the file has {count}")
    frame = pixels[index] if multi else pixels
    window_ = options.window
    if window_ is None and modality == "ct":
        window_ = _file_window(ds) or DEFAULT_CT_WINDOW  # the file's own window before the modality default
    try:
        grey = dicom_display(ds, frame, modality, window_)
    except Exception as exc:  # noqa: BLE001  (a damaged LUT, window or photometric element)
        raise InputError(f"{label}: DICOM image cannot be displayed ({type(exc).__name__})") from None
    metadata: dict[str, Any] = {**tags, "frame": index, "frames": count, "width": int(frame.shape[1]),
                                "height": int(frame.shape[0])}
    if window_ is not None:
        metadata["window"] = list(resolve_window(window_))
    if withheld:
        metadata["withheld_tags"] = withheld
    return MedicalImage(Image.fromarray(np.ascontiguousarray(grey)).convert("RGB"), "dicom", modality, metadata)


# ---------------------------------------------------------------- NIfTI
def nifti_slice(data: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One plane of a canonical volume, rotated so that anterior is up (radiological display)."""
    return np.ascontiguousarray(np.rot90(np.take(data, index, axis=axis)))


def _gunzip(data: bytes, label: str, max_bytes: int) -> bytes:
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
                if out.tell() > max_bytes:  # a gzip bomb: stop before it fills memory
                    raise InputError(f"{label}: decompresses to more than {max_bytes:,} bytes")
    except (OSError, EOFError) as exc:
        raise InputError(f"{label}: damaged gzip data ({exc})") from None
    return out.getvalue()


def _read_nifti(data: bytes, label: str, options: ReadOptions, max_pixels: int, max_bytes: int) -> MedicalImage:
    import nibabel as nib

    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, label, max_bytes)
    try:
        kind = nib.Nifti2Image if int.from_bytes(data[:4], "little") == 540 else nib.Nifti1Image
        volume = kind.from_bytes(data)
        shape = tuple(int(n) for n in volume.shape)
    except Exception as exc:  # noqa: BLE001  (nibabel raises many types for damaged headers)
        raise InputError(f"{label}: not a readable NIfTI file ({type(exc).__name__})") from None
    return nifti_volume_image(volume, shape, label, options, max_pixels)


def nifti_volume_image(volume: Any, shape: tuple[int, ...], label: str, options: ReadOptions,
                       max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> MedicalImage:
    """One slice of a loaded nibabel image as a picture (the shape is checked before the voxels are read)."""
    import nibabel as nib

    if len(shape) not in (2, 3, 4) or min(shape) < 1 or int(np.prod(shape)) > MAX_VOLUME_VOXELS:
        raise InputError(f"{label}: NIfTI shape {list(shape)} is not a usable 2-D, 3-D or 4-D image")
    try:
        canonical = nib.as_closest_canonical(volume)
        dataobj = canonical.dataobj
        voxels = np.asarray(dataobj[..., 0] if len(shape) == 4 else dataobj[...], dtype=np.float32)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{label}: NIfTI voxels cannot be read ({type(exc).__name__})") from None
    if voxels.ndim == 2:
        voxels = voxels[:, :, None]
    axis = options.axis
    plane_shape = [n for i, n in enumerate(voxels.shape) if i != axis]
    if min(plane_shape) < 2 or plane_shape[0] * plane_shape[1] > max_pixels:
        raise InputError(f"{label}: slices along axis {axis} of a {list(voxels.shape)} volume are not usable images")
    count = voxels.shape[axis]
    index = count // 2 if options.slice_index is None else options.slice_index
    if index >= count:
        raise InputError(f"{label}: slice {index} requested, the volume has {count} along axis {axis}")
    modality = options.modality or "mri"
    grey = grey_to_uint8(nifti_slice(voxels, axis, index), modality, options.window)
    zooms = [float(z) for z in canonical.header.get_zooms()[:3]]
    metadata: dict[str, Any] = {"shape": list(voxels.shape), "axis": axis, "slice": index, "slices": count,
                                "zooms": zooms, "width": int(grey.shape[1]), "height": int(grey.shape[0])}
    if options.window is not None:
        metadata["window"] = list(resolve_window(options.window))
    return MedicalImage(Image.fromarray(grey).convert("RGB"), "nifti", modality, metadata)
